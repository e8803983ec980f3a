-- Per-sample rows for the dashboard's drill-down table: up to $limit_per_cell samples per
-- (model, benchmark, method_label, budget), failed samples first, then the lowest scores.
--
-- cell_samples is the number of samples of that key, so a reader can tell when rows were
-- left out. The prompt is not stored, so the table has no prompt excerpt.
WITH ranked AS (
    SELECT
        model, benchmark, method_label, budget_kind, budget, budget_ratio, task, sample_id,
        prediction, "references", score, kl, top1_agreement, error,
        count(*) OVER cell AS cell_samples,
        row_number() OVER (cell ORDER BY error IS NULL, score NULLS FIRST, sample_id, run_id) AS position
    FROM samples
    WINDOW cell AS (PARTITION BY model, benchmark, method_label, budget_kind, budget, budget_ratio)
)
SELECT * EXCLUDE (position)
FROM ranked
WHERE position <= $limit_per_cell
ORDER BY model, benchmark, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST, position
