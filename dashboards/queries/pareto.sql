-- Memory-fidelity Pareto points: one row per (model, benchmark, method_label, budget) with
-- the mean score, the mean KL and the mean physical KV bytes kept.
--
-- Aggregates use the samples without an error. on_score_frontier is true when no other
-- point of the same (model, benchmark) keeps at most as many bytes with at least the same
-- mean score, and is strictly better in one of the two. on_kl_frontier is the same with
-- the mean KL, where lower is better. Both are null when the point lacks a value.
WITH points AS (
    SELECT
        model, benchmark, method_label, budget_kind, budget, budget_ratio,
        count(*) FILTER (WHERE error IS NULL AND score IS NOT NULL) AS n,
        count(error) AS errors,
        avg(score) FILTER (WHERE error IS NULL) AS mean_score,
        avg(kl) FILTER (WHERE error IS NULL) AS mean_kl,
        avg(kv_bytes_kept) FILTER (WHERE error IS NULL) AS mean_kv_bytes_kept,
        avg(kv_bytes_full) FILTER (WHERE error IS NULL) AS mean_kv_bytes_full,
        coalesce(bool_or(masked_only) FILTER (WHERE error IS NULL), false) AS masked_only
    FROM samples
    GROUP BY model, benchmark, method_label, budget_kind, budget, budget_ratio
)
SELECT
    p.*,
    CASE WHEN p.mean_score IS NULL OR p.mean_kv_bytes_kept IS NULL THEN NULL
    ELSE NOT EXISTS (
        SELECT 1 FROM points AS q
        WHERE q.model = p.model AND q.benchmark = p.benchmark
            AND q.mean_kv_bytes_kept <= p.mean_kv_bytes_kept
            AND q.mean_score >= p.mean_score
            AND (q.mean_kv_bytes_kept < p.mean_kv_bytes_kept OR q.mean_score > p.mean_score)
    ) END AS on_score_frontier,
    CASE WHEN p.mean_kl IS NULL OR p.mean_kv_bytes_kept IS NULL THEN NULL
    ELSE NOT EXISTS (
        SELECT 1 FROM points AS q
        WHERE q.model = p.model AND q.benchmark = p.benchmark
            AND q.mean_kv_bytes_kept <= p.mean_kv_bytes_kept
            AND q.mean_kl <= p.mean_kl
            AND (q.mean_kv_bytes_kept < p.mean_kv_bytes_kept OR q.mean_kl < p.mean_kl)
    ) END AS on_kl_frontier
FROM points AS p
ORDER BY p.model, p.benchmark, p.mean_kv_bytes_kept NULLS LAST, p.method_label
