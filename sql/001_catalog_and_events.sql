-- Catalog, users and the append-only interaction log (range-partitioned by day).

CREATE TABLE users (
    user_id     BIGINT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    country     VARCHAR(2),
    preferences JSONB NOT NULL DEFAULT '{}'::jsonb   -- explicit preferences (onboarding)
);

CREATE TABLE items (
    item_id     BIGINT PRIMARY KEY,
    title       TEXT NOT NULL,
    category    VARCHAR(50),
    tags        TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    popularity  DOUBLE PRECISION NOT NULL DEFAULT 0   -- rolling popularity, set by the daily DAG
);
CREATE INDEX items_category_idx ON items (category);
CREATE INDEX items_updated_at_idx ON items (updated_at);

-- Interaction events. Append-only; one partition per day (interactions_pYYYYMMDD),
-- created ahead by recs_ensure_interaction_partitions(); bulk-loaded history older than
-- the hot window goes to one partition per month (interactions_mYYYYMM).
CREATE TABLE interactions (
    event_id    BIGINT NOT NULL,
    user_id     BIGINT NOT NULL,
    item_id     BIGINT NOT NULL,
    event_type  VARCHAR(20) NOT NULL
                CHECK (event_type IN ('click', 'view', 'purchase', 'rating')),
    rating      REAL CHECK (rating IS NULL OR rating BETWEEN 0 AND 10),
    "timestamp" TIMESTAMPTZ NOT NULL,
    context     JSONB,
    ingested_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, "timestamp")
) PARTITION BY RANGE ("timestamp");
CREATE INDEX interactions_user_ts_idx ON interactions (user_id, "timestamp");

-- Ids for events posted without one (loaders derive stable ids from the row's content).
CREATE SEQUENCE interactions_event_id_seq START WITH 1;

-- Creates the partitions that cover [from_day, to_day]. Days on or after daily_from get
-- one partition each (interactions_pYYYYMMDD); older days, typically a bulk load of
-- history, get one partition per month (interactions_mYYYYMM) unless that month already
-- has daily partitions. This keeps years of history to a few hundred partitions.
-- Returns the number of partitions created. Safe to call concurrently and repeatedly.
CREATE FUNCTION recs_ensure_interaction_partitions(
    from_day DATE, to_day DATE, daily_from DATE DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    d       DATE;
    m       DATE;
    created INTEGER := 0;
    dname   TEXT;
    mname   TEXT;
BEGIN
    IF to_day < from_day THEN
        RAISE EXCEPTION 'to_day % is before from_day %', to_day, from_day;
    END IF;
    daily_from := COALESCE(daily_from, from_day);
    -- One creator at a time: concurrent callers wait instead of colliding.
    PERFORM pg_advisory_xact_lock(hashtext('recs_interaction_partitions'));
    d := from_day;
    WHILE d <= to_day LOOP
        m := date_trunc('month', d)::date;
        mname := 'interactions_m' || to_char(m, 'YYYYMM');
        dname := 'interactions_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(mname) IS NOT NULL THEN
            d := (m + interval '1 month')::date;          -- month already covered
            CONTINUE;
        END IF;
        IF d < daily_from AND NOT EXISTS (
               SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'interactions'::regclass
                 AND c.relname LIKE 'interactions_p' || to_char(m, 'YYYYMM') || '%') THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF interactions FOR VALUES FROM (%L) TO (%L)',
                mname, m::timestamp AT TIME ZONE 'UTC',
                (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
            d := (m + interval '1 month')::date;
            CONTINUE;
        END IF;
        IF to_regclass(dname) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF interactions FOR VALUES FROM (%L) TO (%L)',
                dname, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Precomputed embeddings (spec), one row per entity, space and model version.
CREATE TABLE embeddings (
    entity_id   BIGINT NOT NULL,
    entity_type VARCHAR(10) NOT NULL CHECK (entity_type IN ('user', 'item')),
    vector      REAL[] NOT NULL,
    model_ver   VARCHAR(40) NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_ver, entity_type, entity_id)
);

-- Record of bulk loads, so that re-running the same load is recognised.
CREATE TABLE loads (
    load_id     BIGSERIAL PRIMARY KEY,
    source      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    users       BIGINT NOT NULL DEFAULT 0,
    items       BIGINT NOT NULL DEFAULT 0,
    interactions BIGINT NOT NULL DEFAULT 0,
    skipped     BIGINT NOT NULL DEFAULT 0,
    loaded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, digest)
);
