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

-- Interaction events. Append-only; one partition per day, named interactions_pYYYYMMDD,
-- created ahead by recs_ensure_interaction_partitions().
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

CREATE FUNCTION recs_ensure_interaction_partitions(from_day DATE, to_day DATE)
RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    d       DATE;
    created INTEGER := 0;
    name    TEXT;
BEGIN
    IF to_day < from_day THEN
        RAISE EXCEPTION 'to_day % is before from_day %', to_day, from_day;
    END IF;
    -- One creator at a time: concurrent callers wait instead of colliding.
    PERFORM pg_advisory_xact_lock(hashtext('recs_interaction_partitions'));
    d := from_day;
    WHILE d <= to_day LOOP
        name := 'interactions_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF interactions FOR VALUES FROM (%L) TO (%L)',
                name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
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
