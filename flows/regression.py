"""Compare a nightly run with a baseline run: paired bootstrap on shared samples, memory and latency."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.sql import connect

KEY_COLUMNS = ("model", "method_label", "budget", "benchmark", "phase")

_PAIRED_ROWS = """
SELECT
    c.model, c.method_label, c.budget, c.benchmark, coalesce(c.phase, 'prefill') AS phase, c.sample_id,
    c.score AS score_new, b.score AS score_base,
    c.kv_bytes_kept AS bytes_new, b.kv_bytes_kept AS bytes_base,
    c.prefill_s + c.compression_s + c.decode_s AS seconds_new,
    b.prefill_s + b.compression_s + b.decode_s AS seconds_base
FROM samples c
JOIN samples b
  ON b.run_id = $baseline
 AND c.model = b.model AND c.method_label = b.method_label AND c.benchmark = b.benchmark
 AND c.budget IS NOT DISTINCT FROM b.budget AND c.sample_id = b.sample_id
 AND coalesce(c.phase, 'prefill') = coalesce(b.phase, 'prefill')
WHERE c.run_id = $candidate AND c.error IS NULL AND b.error IS NULL
ORDER BY c.model, c.method_label, c.budget, c.benchmark, phase, c.sample_id
"""


@dataclass(frozen=True)
class Thresholds:
    """When a change counts as a regression."""

    score_drop: float = 0.05  # absolute drop of the mean score, significant at 95%
    kv_bytes_increase: float = 0.01  # relative increase of mean physical KV bytes
    latency_increase: float = 0.5  # relative increase of mean prefill + compression + decode time
    resamples: int = 2000
    seed: int = 0


@dataclass
class Comparison:
    """One (model, method, budget, benchmark, phase) compared on the samples both runs share."""

    model: str
    method_label: str
    budget: int | None
    benchmark: str
    phase: str
    n: int
    score_base: float
    score_new: float
    delta: float
    ci_low: float
    ci_high: float
    bytes_ratio: float
    latency_ratio: float
    reasons: list[str]

    @property
    def regressed(self) -> bool:
        return bool(self.reasons)


def paired_bootstrap_ci(differences: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of paired differences."""
    if len(differences) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare_runs(store_root: str, candidate: str, baseline: str, thresholds: Thresholds) -> list[Comparison]:
    """Compare every cell key of `candidate` with `baseline` on their shared sample ids."""
    connection = connect(store_root, run_ids=[candidate, baseline])
    try:
        rows = connection.execute(_PAIRED_ROWS, {"candidate": candidate, "baseline": baseline}).fetchall()
    finally:
        connection.close()

    groups: dict[tuple, list[tuple]] = {}
    for row in rows:
        groups.setdefault(tuple(row[: len(KEY_COLUMNS)]), []).append(row)
    return [_compare_group(key, group, thresholds) for key, group in groups.items()]


def _compare_group(key: tuple, rows: list[tuple], thresholds: Thresholds) -> Comparison:
    score_new = np.array([row[6] for row in rows], dtype=float)
    score_base = np.array([row[7] for row in rows], dtype=float)
    differences = score_new - score_base
    low, high = paired_bootstrap_ci(differences, thresholds.resamples, thresholds.seed)
    bytes_ratio = float(np.mean([row[8] for row in rows]) / max(np.mean([row[9] for row in rows]), 1))
    latency_ratio = float(np.mean([row[10] for row in rows]) / max(np.mean([row[11] for row in rows]), 1e-9))

    reasons = []
    delta = float(differences.mean())
    if delta < -thresholds.score_drop and high < 0:
        reasons.append(f"score {score_base.mean():.3f} -> {score_new.mean():.3f} (95% CI of change {low:+.3f}..{high:+.3f})")
    if bytes_ratio > 1 + thresholds.kv_bytes_increase:
        reasons.append(f"KV bytes x{bytes_ratio:.3f}")
    if latency_ratio > 1 + thresholds.latency_increase:
        reasons.append(f"latency x{latency_ratio:.2f}")
    return Comparison(*key, len(rows), float(score_base.mean()), float(score_new.mean()), delta, low, high,
                      bytes_ratio, latency_ratio, reasons)


def markdown_report(candidate: str, baseline: str, comparisons: list[Comparison]) -> str:
    """Return a markdown summary and a table of every comparison, regressions first."""
    regressed = [c for c in comparisons if c.regressed]
    lines = [
        f"# Nightly regression check: {candidate} against {baseline}",
        "",
        f"{len(regressed)} of {len(comparisons)} (model, method, budget, benchmark) keys regressed.",
        "",
        "| model | method | budget | benchmark | n | base | new | change (95% CI) | KV bytes | latency | regression |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(comparisons, key=lambda c: (not c.regressed, c.model, c.method_label, c.budget or 0, c.benchmark)):
        budget = "full" if c.budget is None else c.budget
        lines.append(
            f"| {c.model} | {c.method_label} | {budget} | {c.benchmark} | {c.n} | {c.score_base:.3f} | "
            f"{c.score_new:.3f} | {c.delta:+.3f} ({c.ci_low:+.3f}..{c.ci_high:+.3f}) | x{c.bytes_ratio:.3f} | "
            f"x{c.latency_ratio:.2f} | {'; '.join(c.reasons) or 'no'} |"
        )
    return "\n".join(lines) + "\n"
