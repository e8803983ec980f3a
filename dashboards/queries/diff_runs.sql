-- Per-sample difference between two runs, $run_a and $run_b.
--
-- Samples are matched on (model, method_label, budget, benchmark, sample_id). A sample that
-- only one run has appears with nulls on the other side. delta is score_b - score_a, and
-- rows are sorted by the size of the change, largest first.
WITH a AS (
    SELECT * FROM samples WHERE run_id = $run_a
),
b AS (
    SELECT * FROM samples WHERE run_id = $run_b
)
SELECT
    coalesce(a.model, b.model) AS model,
    coalesce(a.method_label, b.method_label) AS method_label,
    coalesce(a.budget_kind, b.budget_kind) AS budget_kind,
    coalesce(a.budget, b.budget) AS budget,
    coalesce(a.budget_ratio, b.budget_ratio) AS budget_ratio,
    coalesce(a.benchmark, b.benchmark) AS benchmark,
    coalesce(a.sample_id, b.sample_id) AS sample_id,
    a.score AS score_a,
    b.score AS score_b,
    b.score - a.score AS delta,
    a.prediction AS prediction_a,
    b.prediction AS prediction_b,
    a.error AS error_a,
    b.error AS error_b
FROM a
FULL OUTER JOIN b
    ON a.model = b.model
    AND a.method_label = b.method_label
    AND a.budget_kind = b.budget_kind
    AND a.budget IS NOT DISTINCT FROM b.budget
    AND a.budget_ratio IS NOT DISTINCT FROM b.budget_ratio
    AND a.benchmark = b.benchmark
    AND a.sample_id = b.sample_id
ORDER BY abs(delta) DESC NULLS LAST, model, method_label, budget NULLS FIRST, budget_ratio NULLS FIRST, benchmark, sample_id
