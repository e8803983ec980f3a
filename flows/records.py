"""The run and cell rows a run writes to the store, built without Prefect or Ray."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict

from flows import provenance
from flows.config import RunConfig
from storage.schema import SCHEMA_VERSION
from workers.units import CellSpec


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def cell_row(run_id: str, cell: CellSpec, status: str, error: str | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        **cell.store_columns(),
        "num_samples": cell.num_samples,
        "status": status,
        "error": error,
        "config": json.dumps(asdict(cell), sort_keys=True, default=str),
        "updated_at": utcnow(),
    }


def run_row(run_id: str, config: RunConfig, status: str, started: dt.datetime, finished=None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status,
        "started_at": started,
        "finished_at": finished,
        "config": config.model_dump_json(),
        "git_commit": provenance.git_commit(),
        "package_versions": provenance.package_versions(),
        "host": provenance.host_name(),
        "device": provenance.device_name(),
    }
