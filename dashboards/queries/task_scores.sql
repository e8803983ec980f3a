-- Mean score per (model, benchmark, task, method_label, budget), for the benchmarks whose
-- samples span two or more tasks (RULER's and LongBench's subsets, for example).
--
-- n and mean_score use the samples without an error and with a score. Failed samples are
-- counted in `errors`.
WITH multi_task AS (
    SELECT model, benchmark
    FROM samples
    WHERE task IS NOT NULL
    GROUP BY model, benchmark
    HAVING count(DISTINCT task) >= 2
)
SELECT
    s.model, s.benchmark, s.task, s.method_label, s.budget_kind, s.budget, s.budget_ratio,
    count(*) FILTER (WHERE s.error IS NULL AND s.score IS NOT NULL) AS n,
    count(s.error) AS errors,
    avg(s.score) FILTER (WHERE s.error IS NULL) AS mean_score
FROM samples AS s
JOIN multi_task AS m ON s.model = m.model AND s.benchmark = m.benchmark
WHERE s.task IS NOT NULL
GROUP BY s.model, s.benchmark, s.task, s.method_label, s.budget_kind, s.budget, s.budget_ratio
ORDER BY s.model, s.benchmark, s.task, s.method_label, s.budget_kind, s.budget NULLS FIRST,
    s.budget_ratio NULLS FIRST
