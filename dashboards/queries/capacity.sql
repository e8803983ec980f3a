-- Capacity of the kept cache against fidelity: per (model, benchmark, method_label, budget),
-- the mean capacity, mean score and mean KL of the samples without an error, for the
-- scatter plots of the capacity section.
SELECT
    model, benchmark, method_label, budget_kind, budget, budget_ratio,
    count(*) FILTER (WHERE error IS NULL AND capacity IS NOT NULL) AS n,
    avg(capacity) FILTER (WHERE error IS NULL) AS mean_capacity,
    avg(score) FILTER (WHERE error IS NULL AND capacity IS NOT NULL) AS mean_score,
    avg(kl) FILTER (WHERE error IS NULL AND capacity IS NOT NULL) AS mean_kl
FROM samples
GROUP BY model, benchmark, method_label, budget_kind, budget, budget_ratio
HAVING count(*) FILTER (WHERE error IS NULL AND capacity IS NOT NULL) > 0
ORDER BY model, benchmark, method_label, budget_kind, budget NULLS FIRST, budget_ratio NULLS FIRST
