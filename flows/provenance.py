"""Facts recorded with every run: code commit, package versions, host and device."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "capkv-eval", "torch", "transformers", "kvpress", "ray", "prefect", "duckdb", "pyarrow", "datasets",
)


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"run-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def git_commit() -> str | None:
    """Return the commit of the source tree this package runs from, when it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def package_versions() -> str:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def host_name() -> str:
    return socket.gethostname()
