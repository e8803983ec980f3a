-- Latency per (model, method_label, budget): mean prefill and compression seconds and the
-- decode throughput.
--
-- Aggregates use the samples without an error. decode_tokens_per_s is
-- sum(tokens_generated) / sum(decode_s) over the samples with both values and a positive
-- decode_s, so long answers weigh more than in a mean of per-sample rates.
SELECT
    model, method_label, budget_kind, budget, budget_ratio,
    count(*) FILTER (WHERE error IS NULL) AS n,
    count(error) AS errors,
    avg(prefill_s) FILTER (WHERE error IS NULL) AS mean_prefill_s,
    avg(compression_s) FILTER (WHERE error IS NULL) AS mean_compression_s,
    avg(decode_s) FILTER (WHERE error IS NULL) AS mean_decode_s,
    sum(tokens_generated) FILTER (WHERE error IS NULL AND decode_s > 0)
        / sum(decode_s) FILTER (WHERE error IS NULL AND decode_s > 0 AND tokens_generated IS NOT NULL)
        AS decode_tokens_per_s
FROM samples
GROUP BY model, method_label, budget_kind, budget, budget_ratio
ORDER BY model, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST
