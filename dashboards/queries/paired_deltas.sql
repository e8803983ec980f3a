-- Change from run $run_a to run $run_b per (model, benchmark, method_label, budget), on the
-- samples that both runs scored without an error.
--
-- Samples pair on (model, benchmark, method_label, budget, sample_id). delta is the mean of
-- score_b - score_a over the pairs, and ci_low and ci_high bound its 95% interval. n_a and
-- n_b count each run's scored samples, so n_a - n shows the samples of $run_a without a pair.
-- A key that only one run scored has n = 0 and null means, delta and interval.
-- kv_bytes_ratio and latency_ratio divide $run_b's mean by $run_a's over the pairs, latency
-- being prefill_s + compression_s + decode_s.
--
-- The interval is the Poisson bootstrap of the leaderboard query (1000 resamples, weights
-- from Poisson(1)) applied to the paired differences. Each pair's weight comes from hashing
-- the pair's identity with the resample number and a fixed seed, so the result does not
-- depend on file layout or thread count. Scores must lie within +-1e9.
--
-- NOTE: two cells of one run that share (model, benchmark, method_label, budget) but differ
-- elsewhere (query_aware, seed) pair each of their samples with both cells of the other run.
WITH a AS (
    SELECT * FROM samples WHERE run_id = $run_a AND error IS NULL AND score IS NOT NULL
),
b AS (
    SELECT * FROM samples WHERE run_id = $run_b AND error IS NULL AND score IS NOT NULL
),
pairs AS (
    SELECT
        a.model, a.benchmark, a.method_label, a.budget_kind, a.budget, a.budget_ratio, a.sample_id,
        a.score AS score_a, b.score AS score_b,
        a.kv_bytes_kept AS kv_bytes_a, b.kv_bytes_kept AS kv_bytes_b,
        a.prefill_s + a.compression_s + a.decode_s AS seconds_a,
        b.prefill_s + b.compression_s + b.decode_s AS seconds_b
    FROM a
    JOIN b
        ON a.model = b.model
        AND a.benchmark = b.benchmark
        AND a.method_label = b.method_label
        AND a.budget_kind = b.budget_kind
        AND a.budget IS NOT DISTINCT FROM b.budget
        AND a.budget_ratio IS NOT DISTINCT FROM b.budget_ratio
        AND a.sample_id = b.sample_id
),
keyed AS (
    SELECT
        dense_rank() OVER (
            ORDER BY model, benchmark, method_label, budget_kind, budget, budget_ratio
        ) AS group_id,
        *,
        hash(model, benchmark, method_label, budget_kind, budget, budget_ratio, sample_id) AS pair_key,
        CAST(score_b - score_a AS DECIMAL(18, 9)) AS difference
    FROM pairs
),
grouped AS (
    SELECT
        group_id, model, benchmark, method_label, budget_kind, budget, budget_ratio,
        count(*) AS n,
        avg(score_a) AS mean_a,
        avg(score_b) AS mean_b,
        avg(score_b - score_a) AS delta,
        avg(kv_bytes_b) / NULLIF(avg(kv_bytes_a), 0) AS kv_bytes_ratio,
        avg(seconds_b) / NULLIF(avg(seconds_a), 0) AS latency_ratio
    FROM keyed
    GROUP BY ALL
),
resamples AS (
    SELECT
        group_id, b,
        CAST(sum(w * difference) AS DOUBLE) / NULLIF(sum(w), 0) AS resample_mean
    FROM (
        SELECT
            group_id, b, difference,
            CASE
                WHEN u < 0.36787944117144233 THEN 0
                WHEN u < 0.7357588823428847 THEN 1
                WHEN u < 0.9196986029286058 THEN 2
                WHEN u < 0.9810118431238463 THEN 3
                WHEN u < 0.9963401531726563 THEN 4
                WHEN u < 0.9994058151824183 THEN 5
                WHEN u < 0.999916758850712 THEN 6
                WHEN u < 0.9999897508033253 THEN 7
                ELSE 8
            END AS w
        FROM (
            SELECT group_id, b, difference, hash(pair_key, b, 20261204) / 18446744073709551616.0 AS u
            FROM keyed, range(1000) AS resample(b)
        )
    )
    GROUP BY group_id, b
),
intervals AS (
    SELECT
        group_id,
        quantile_cont(resample_mean, 0.025) AS ci_low,
        quantile_cont(resample_mean, 0.975) AS ci_high
    FROM resamples
    GROUP BY group_id
),
counts_a AS (
    SELECT model, benchmark, method_label, budget_kind, budget, budget_ratio, count(*) AS n_a
    FROM a GROUP BY ALL
),
counts_b AS (
    SELECT model, benchmark, method_label, budget_kind, budget, budget_ratio, count(*) AS n_b
    FROM b GROUP BY ALL
),
keys AS (
    SELECT model, benchmark, method_label, budget_kind, budget, budget_ratio FROM counts_a
    UNION
    SELECT model, benchmark, method_label, budget_kind, budget, budget_ratio FROM counts_b
)
SELECT
    k.model, k.benchmark, k.method_label, k.budget_kind, k.budget, k.budget_ratio,
    coalesce(g.n, 0) AS n, coalesce(ca.n_a, 0) AS n_a, coalesce(cb.n_b, 0) AS n_b,
    g.mean_a, g.mean_b, g.delta, i.ci_low, i.ci_high, g.kv_bytes_ratio, g.latency_ratio
FROM keys AS k
LEFT JOIN grouped AS g
    ON k.model = g.model AND k.benchmark = g.benchmark AND k.method_label = g.method_label
    AND k.budget_kind = g.budget_kind AND k.budget IS NOT DISTINCT FROM g.budget
    AND k.budget_ratio IS NOT DISTINCT FROM g.budget_ratio
LEFT JOIN intervals AS i ON i.group_id = g.group_id
LEFT JOIN counts_a AS ca
    ON k.model = ca.model AND k.benchmark = ca.benchmark AND k.method_label = ca.method_label
    AND k.budget_kind = ca.budget_kind AND k.budget IS NOT DISTINCT FROM ca.budget
    AND k.budget_ratio IS NOT DISTINCT FROM ca.budget_ratio
LEFT JOIN counts_b AS cb
    ON k.model = cb.model AND k.benchmark = cb.benchmark AND k.method_label = cb.method_label
    AND k.budget_kind = cb.budget_kind AND k.budget IS NOT DISTINCT FROM cb.budget
    AND k.budget_ratio IS NOT DISTINCT FROM cb.budget_ratio
ORDER BY k.model, k.benchmark, k.method_label, k.budget_kind, k.budget NULLS FIRST, k.budget_ratio NULLS FIRST
