-- Needle-in-a-haystack accuracy: mean score per (model, method_label, budget) on the
-- `needle` benchmark. The dashboard draws it as a heatmap.
--
-- n and mean_score use the samples without an error and with a score. Failed samples are
-- counted in `errors`.
SELECT
    model, method_label, budget_kind, budget, budget_ratio,
    count(*) FILTER (WHERE error IS NULL AND score IS NOT NULL) AS n,
    count(error) AS errors,
    avg(score) FILTER (WHERE error IS NULL) AS mean_score
FROM samples
WHERE benchmark = 'needle'
GROUP BY model, method_label, budget_kind, budget, budget_ratio
ORDER BY model, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST
