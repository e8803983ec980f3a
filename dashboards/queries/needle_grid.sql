-- Needle grid: mean score per (model, benchmark, method_label, budget, context length,
-- needle depth), for the length x depth heatmaps.
--
-- The store has no depth column, so both coordinates come from the sample id that the
-- needle_grid benchmark writes, `needle_grid-<context length>-<depth percent>-<repeat>`.
-- Samples whose id has another form (the single-depth `needle` benchmark among them) are
-- left out. n and mean_score use the samples without an error and with a score. Failed
-- samples are counted in `errors`.
WITH parsed AS (
    SELECT
        *,
        TRY_CAST(regexp_extract(sample_id, '^needle_grid-([0-9]+)-(.+)-([0-9]+)$', 1) AS BIGINT)
            AS context_length,
        TRY_CAST(regexp_extract(sample_id, '^needle_grid-([0-9]+)-(.+)-([0-9]+)$', 2) AS DOUBLE)
            AS depth_percent
    FROM samples
)
SELECT
    model, benchmark, method_label, budget_kind, budget, budget_ratio, context_length, depth_percent,
    count(*) FILTER (WHERE error IS NULL AND score IS NOT NULL) AS n,
    count(error) AS errors,
    avg(score) FILTER (WHERE error IS NULL) AS mean_score
FROM parsed
WHERE context_length IS NOT NULL AND depth_percent IS NOT NULL
GROUP BY ALL
ORDER BY model, benchmark, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST,
    context_length, depth_percent
