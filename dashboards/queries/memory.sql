-- Memory: physical KV-cache bytes and kept tokens per (model, method_label, budget).
--
-- Aggregates use the samples without an error. Failed samples are counted in `errors`.
-- kv_bytes_ratio is sum(kv_bytes_kept) / sum(kv_bytes_full), and kept_tokens_ratio is
-- sum(kept_tokens) / sum(context_tokens). masked_only is true when any sample of the group
-- only masked tokens, so its kept bytes did not shrink.
SELECT
    model, method_label, budget_kind, budget, budget_ratio,
    count(*) FILTER (WHERE error IS NULL) AS n,
    count(error) AS errors,
    avg(kv_bytes_full) FILTER (WHERE error IS NULL) AS mean_kv_bytes_full,
    avg(kv_bytes_kept) FILTER (WHERE error IS NULL) AS mean_kv_bytes_kept,
    sum(kv_bytes_kept) FILTER (WHERE error IS NULL)
        / sum(kv_bytes_full) FILTER (WHERE error IS NULL) AS kv_bytes_ratio,
    avg(kept_tokens) FILTER (WHERE error IS NULL) AS mean_kept_tokens,
    avg(context_tokens) FILTER (WHERE error IS NULL) AS mean_context_tokens,
    sum(kept_tokens) FILTER (WHERE error IS NULL)
        / sum(context_tokens) FILTER (WHERE error IS NULL) AS kept_tokens_ratio,
    avg(peak_memory_bytes) FILTER (WHERE error IS NULL) AS mean_peak_memory_bytes,
    max(peak_memory_bytes) FILTER (WHERE error IS NULL) AS max_peak_memory_bytes,
    bool_or(masked_only) FILTER (WHERE error IS NULL) AS masked_only
FROM samples
GROUP BY model, method_label, budget_kind, budget, budget_ratio
ORDER BY model, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST
