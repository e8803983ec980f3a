-- Runs whose configuration has "label": "nightly", oldest first.
SELECT run_id, status, started_at, finished_at, git_commit
FROM runs
WHERE json_extract_string(config, '$.label') = 'nightly'
ORDER BY started_at, run_id
