"""Fault injection for tests of the pipeline's failure handling, switched on by an environment variable.

`CAPKV_EVAL_FAULTS` contains comma-separated faults, and Ray actors inherit it from the driver:
- `invert-scores:METHOD`: METHOD keeps its lowest-scored tokens (a planted regression);
- `nan-logits:SAMPLE_ID`: the prefill of that sample returns NaN logits;
- `oom:METHOD`: every sample of METHOD's cells fails as if the device ran out of memory.
Nothing is injected when the variable is unset.
"""

from __future__ import annotations

import os

FAULTS_ENV = "CAPKV_EVAL_FAULTS"


def active_faults() -> set[tuple[str, str]]:
    """Return the (kind, target) pairs named in the environment."""
    faults = set()
    for item in os.environ.get(FAULTS_ENV, "").split(","):
        if ":" in item:
            kind, target = item.strip().split(":", 1)
            faults.add((kind, target))
    return faults


def invert_scores(method) -> None:
    """Make one method instance keep its lowest-scored tokens instead of its highest."""
    original = method.score
    method.score = lambda layer: -original(layer)
