-- Spearman rank correlation of capacity with score and with KL, per (model, benchmark).
--
-- spearman_score and spearman_kl run over the samples without an error that have both
-- values (n_score and n_kl of them). Tied values share their average rank, and the
-- coefficient is the Pearson correlation of the ranks. It is null with fewer than 3 pairs
-- or when one side is constant.
WITH with_score AS (
    SELECT
        model, benchmark,
        rank() OVER (PARTITION BY model, benchmark ORDER BY capacity)
            + (count(*) OVER (PARTITION BY model, benchmark, capacity) - 1) / 2.0 AS capacity_rank,
        rank() OVER (PARTITION BY model, benchmark ORDER BY score)
            + (count(*) OVER (PARTITION BY model, benchmark, score) - 1) / 2.0 AS value_rank
    FROM samples
    WHERE error IS NULL AND capacity IS NOT NULL AND score IS NOT NULL
),
with_kl AS (
    SELECT
        model, benchmark,
        rank() OVER (PARTITION BY model, benchmark ORDER BY capacity)
            + (count(*) OVER (PARTITION BY model, benchmark, capacity) - 1) / 2.0 AS capacity_rank,
        rank() OVER (PARTITION BY model, benchmark ORDER BY kl)
            + (count(*) OVER (PARTITION BY model, benchmark, kl) - 1) / 2.0 AS value_rank
    FROM samples
    WHERE error IS NULL AND capacity IS NOT NULL AND kl IS NOT NULL
),
score_correlation AS (
    SELECT model, benchmark, count(*) AS n_score, corr(capacity_rank, value_rank) AS rho
    FROM with_score
    GROUP BY model, benchmark
),
kl_correlation AS (
    SELECT model, benchmark, count(*) AS n_kl, corr(capacity_rank, value_rank) AS rho
    FROM with_kl
    GROUP BY model, benchmark
)
SELECT
    coalesce(s.model, k.model) AS model,
    coalesce(s.benchmark, k.benchmark) AS benchmark,
    coalesce(s.n_score, 0) AS n_score,
    CASE WHEN s.n_score >= 3 AND NOT isnan(s.rho) THEN s.rho END AS spearman_score,
    coalesce(k.n_kl, 0) AS n_kl,
    CASE WHEN k.n_kl >= 3 AND NOT isnan(k.rho) THEN k.rho END AS spearman_kl
FROM score_correlation AS s
FULL OUTER JOIN kl_correlation AS k ON s.model = k.model AND s.benchmark = k.benchmark
ORDER BY model, benchmark
