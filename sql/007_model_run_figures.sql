-- Analyst view of the daily runs: one row per model version and scored list, with the
-- gate's choice marked. The daily gate scores popularity, each generator alone, the
-- ranker and the full pipeline on the same held-out users, and each generator's lists
-- after the same re-ranking as the full pipeline (stage 'reranked'); it publishes the
-- best of the full pipeline and the re-ranked generators (jobs/funnel.py: choose).
--
--   SELECT model_version, model, ndcg_at_10, choice_reason FROM model_run_figures
--   WHERE is_published_choice ORDER BY logical_date DESC;
CREATE VIEW model_run_figures AS
WITH figures AS (
    SELECT r.model_version, m.key AS model,
           CASE WHEN m.key = 'full_pipeline' THEN 'reranked' ELSE 'alone' END AS stage,
           m.value
    FROM model_runs r
    CROSS JOIN LATERAL jsonb_each(r.metrics) AS m(key, value)
    WHERE jsonb_typeof(m.value) = 'object' AND m.value ? 'ndcg@10'
      AND m.key <> 'published_model'
    UNION ALL
    SELECT r.model_version, m.key, 'reranked', m.value
    FROM model_runs r
    CROSS JOIN LATERAL jsonb_each(
        CASE WHEN jsonb_typeof(r.metrics->'reranked') = 'object'
             THEN r.metrics->'reranked' ELSE '{}'::jsonb END) AS m(key, value)
)
SELECT r.model_version, r.logical_date, r.status, r.message, f.model, f.stage,
       (f.value->>'ndcg@10')::float8 AS ndcg_at_10,
       (f.value->>'precision@10')::float8 AS precision_at_10,
       (f.value->>'recall@10')::float8 AS recall_at_10,
       (f.value->>'map')::float8 AS map,
       (f.value->>'coverage')::float8 AS coverage,
       r.metrics->'published_model'->>'name' AS published_choice,
       COALESCE(f.stage = 'reranked'
                AND f.model = r.metrics->'published_model'->>'name', false)
           AS is_published_choice,
       r.metrics->'published_model'->>'reason' AS choice_reason
FROM figures f
JOIN model_runs r USING (model_version);
