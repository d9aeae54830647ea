-- Least privilege (issue 11): three roles besides the administrator.
--
--   recs_pipeline  owns the schema's objects (jobs, loaders, Airflow); not a superuser.
--   recs_reader    the serving process: reads the served tables, appends events.
--   recs_analyst   the analyst views and what docs/analyst-queries.md reads.
--
-- Roles are cluster-wide. They are created here NOLOGIN when absent (an administrator
-- turns on LOGIN and sets a password: `recs db-up` does it for the private instance,
-- see docs/operations.md); the grants are per database. Everything below is idempotent:
-- every database of one server runs it.
DO $$
DECLARE
    r TEXT;
BEGIN
    FOREACH r IN ARRAY ARRAY['recs_pipeline', 'recs_reader', 'recs_analyst'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database
            END;
        END IF;
    END LOOP;
END;
$$;

-- Nothing for everyone: the roles below get what they need by name. (Functions are
-- executable by PUBLIC by default; the partition maintenance is the pipeline's.)
REVOKE EXECUTE ON FUNCTION recs_ensure_interaction_partitions(DATE, DATE, DATE) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION recs_create_interaction_partition(TEXT, TIMESTAMPTZ, TIMESTAMPTZ)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION recs_drain_default_partition(DATE) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recs_ensure_interaction_partitions(DATE, DATE, DATE),
                          recs_create_interaction_partition(TEXT, TIMESTAMPTZ, TIMESTAMPTZ),
                          recs_drain_default_partition(DATE)
    TO recs_pipeline;

-- Temporary tables are the pipeline's (the loaders stage rows in them), not everyone's.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO recs_pipeline, %I',
                   current_database(), current_user);
END;
$$;

-- The pipeline: when the objects were created by another user (a server the project
-- does not manage), it still needs to write everything.
GRANT USAGE, CREATE ON SCHEMA public TO recs_pipeline;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON ALL TABLES IN SCHEMA public TO recs_pipeline;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO recs_pipeline;

-- The reader: exactly what serve/ needs. Partitions created later are reached through
-- their parents, whose privileges are the ones checked.
GRANT USAGE ON SCHEMA public TO recs_reader;
GRANT SELECT ON serving_state, model_runs, recommendations, similar_items, trending, items,
                interactions, api_keys, rerank_rules TO recs_reader;
GRANT INSERT ON interactions TO recs_reader;
GRANT USAGE ON SEQUENCE interactions_event_id_seq TO recs_reader;

-- Analysts: the live views (they run with their owner's rights, so no grant on the list
-- tables is needed) and the tables docs/analyst-queries.md reads. Not the list tables'
-- other versions, not api_keys, users, rules or the pipeline's bookkeeping.
GRANT USAGE ON SCHEMA public TO recs_analyst;
GRANT SELECT ON live_recommendations, live_similar_items, live_trending, model_run_figures,
                serving_state, model_runs, items, interactions TO recs_analyst;
