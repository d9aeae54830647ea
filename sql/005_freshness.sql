-- Freshness between daily versions: the nearline and hourly DAGs' watermarks, the
-- new-item bandit's counters, and an index that finds newly ingested events.

-- How far each incremental pipeline has read. ``value`` advances in the same transaction
-- as the lists it wrote, so a failed run leaves both unchanged and the next run reads the
-- same events (or items) again: none is missed, none is counted twice.
-- ``model_version`` is the live version the run wrote into; when the live version changes,
-- the next run also re-applies what the new version's lists have not seen.
CREATE TABLE pipeline_watermarks (
    name          TEXT PRIMARY KEY,                 -- 'nearline', 'hourly'
    value         TIMESTAMPTZ NOT NULL,
    model_version VARCHAR(40),
    details       JSONB NOT NULL DEFAULT '{}'::jsonb,  -- counts of the run that set it
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Thompson sampling over new items: one arm per (pool, item). ``impressions`` counts the
-- users whose list the hourly run placed the item in; ``clicks`` the distinct users who
-- then engaged with it (any event type), counted once per hourly window.
CREATE TABLE bandit_arms (
    pool        TEXT NOT NULL,
    item_id     BIGINT NOT NULL,
    impressions BIGINT NOT NULL DEFAULT 0 CHECK (impressions >= 0),
    clicks      BIGINT NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, item_id)
);

-- The nearline run reads events by arrival time within the newest day partitions
-- ("timestamp" bounds which partitions are read; this index finds the rows in them).
CREATE INDEX interactions_ingested_at_idx ON interactions (ingested_at);
