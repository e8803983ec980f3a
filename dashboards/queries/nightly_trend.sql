-- Nightly trend: mean score per nightly run and (model, benchmark, method_label, budget),
-- for the runs whose configuration has "label": "nightly", oldest run first.
--
-- n and mean_score use the samples without an error and with a score. Failed samples are
-- counted in `errors`.
WITH nightly AS (
    SELECT run_id, status, started_at
    FROM runs
    WHERE json_extract_string(config, '$.label') = 'nightly'
)
SELECT
    r.run_id, r.status, r.started_at,
    s.model, s.benchmark, s.method_label, s.budget_kind, s.budget, s.budget_ratio,
    count(*) FILTER (WHERE s.error IS NULL AND s.score IS NOT NULL) AS n,
    count(s.error) AS errors,
    avg(s.score) FILTER (WHERE s.error IS NULL) AS mean_score
FROM samples AS s
JOIN nightly AS r ON s.run_id = r.run_id
GROUP BY r.run_id, r.status, r.started_at, s.model, s.benchmark, s.method_label, s.budget_kind, s.budget,
    s.budget_ratio
ORDER BY s.model, s.benchmark, s.method_label, s.budget_kind, s.budget NULLS FIRST, s.budget_ratio NULLS FIRST,
    r.started_at, r.run_id
