"""The nightly regression flow: run the fixed suite, compare it with the last good nightly, fail on regressions."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed

from flows.config import RunConfig, load_config
from flows.evaluate import evaluate
from flows.regression import Thresholds, compare_runs, markdown_report
from storage.sql import connect

NIGHTLY_LABEL = "nightly"
SUITE_FILE = Path(__file__).with_name("configs") / "nightly.yaml"


def default_suite() -> RunConfig:
    return load_config(str(SUITE_FILE))


def last_good_nightly(store_root: str, before_run: str) -> str | None:
    """Return the newest completed nightly run other than `before_run`, by start time."""
    connection = connect(store_root)
    try:
        row = connection.execute(
            "SELECT run_id FROM runs WHERE status = 'completed' AND run_id <> $current "
            "AND json_extract_string(config, '$.label') = $label ORDER BY started_at DESC LIMIT 1",
            {"current": before_run, "label": NIGHTLY_LABEL},
        ).fetchone()
    finally:
        connection.close()
    return row[0] if row else None


@flow(name="nightly-regression")
def nightly_regression(
    suite: RunConfig | None = None,
    baseline_run_id: str | None = None,
    thresholds: Thresholds | None = None,
):
    """Run the regression suite, then compare every (model, method, budget, benchmark) with a baseline.

    The baseline is `baseline_run_id` when given, else the last completed nightly run. The flow
    ends Failed when any key regressed: a significant score drop beyond the threshold, physical
    KV bytes up by more than the threshold, or latency up beyond the threshold.
    """
    logger = get_run_logger()
    suite = (suite or default_suite()).model_copy(update={"label": NIGHTLY_LABEL})
    thresholds = thresholds or Thresholds()
    summary = evaluate(suite)
    candidate, store_root = summary["run_id"], summary["store"]

    baseline = baseline_run_id or last_good_nightly(store_root, candidate)
    if baseline is None:
        message = f"run {candidate} is the first nightly run in {store_root}; it becomes the baseline"
        create_markdown_artifact(key="nightly-regression", markdown=f"# Nightly regression check\n\n{message}\n")
        logger.info(message)
        return Completed(message=message)

    comparisons = compare_runs(store_root, candidate, baseline, thresholds)
    report = markdown_report(candidate, baseline, comparisons)
    if summary["dashboard"]:
        report += f"\nDashboard of run {candidate}: [{summary['dashboard']}](file://{summary['dashboard']})\n"
    create_markdown_artifact(key="nightly-regression", markdown=report, description=f"{candidate} vs {baseline}")
    logger.info("regression report (also the artifact nightly-regression):\n%s", report)
    create_table_artifact(
        key="nightly-regression-table",
        table=[json.loads(json.dumps(vars(c), default=str)) for c in comparisons],
        description="every compared key; `reasons` is empty where nothing regressed",
    )
    regressed = [c for c in comparisons if c.regressed]
    if summary["status"] != "completed":
        return Failed(message=f"nightly run {candidate} ended {summary['status']}")
    if regressed:
        names = ", ".join(f"{c.method_label}@{c.budget} {c.benchmark} on {c.model}" for c in regressed[:5])
        logger.error("%d regression(s) against %s: %s", len(regressed), baseline, names)
        return Failed(message=f"{len(regressed)} regression(s) against {baseline}: {names}")
    logger.info("no regression in %d keys against %s", len(comparisons), baseline)
    return Completed(message=f"no regression in {len(comparisons)} keys against {baseline}")
