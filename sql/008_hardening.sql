-- Hardening (issue 11): the key that wrote an event, a DEFAULT partition so that an
-- event whose day has no partition is still stored, and partition maintenance that
-- works with it.

-- The api_keys.id of the key that wrote the event; NULL for rows written by the loaders
-- and the pipeline. No foreign key: a revoked or deleted key keeps its events.
ALTER TABLE interactions ADD COLUMN key_id BIGINT;

-- Events whose day has no partition land here instead of failing; the maintenance task
-- (jobs/maintenance.py) moves them into day partitions.
CREATE TABLE interactions_default PARTITION OF interactions DEFAULT;

-- Creates partition ``name`` of interactions for [lo, hi). Postgres refuses to create a
-- partition whose range has rows in the DEFAULT partition, so those rows are first moved
-- out of it into a new stand-alone table, which is then attached as the partition: all in
-- the caller's transaction, so that a row is always in exactly one place. Returns the
-- number of rows moved out of the DEFAULT partition.
CREATE FUNCTION recs_create_interaction_partition(name TEXT, lo TIMESTAMPTZ, hi TIMESTAMPTZ)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    moved BIGINT := 0;
BEGIN
    IF to_regclass('interactions_default') IS NOT NULL AND EXISTS (
           SELECT 1 FROM interactions_default
           WHERE "timestamp" >= lo AND "timestamp" < hi) THEN
        EXECUTE format('CREATE TABLE %I (LIKE interactions INCLUDING DEFAULTS '
                       'INCLUDING CONSTRAINTS)', name);
        EXECUTE format('WITH gone AS (DELETE FROM interactions_default '
                       'WHERE "timestamp" >= %L AND "timestamp" < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM gone', lo, hi, name);
        GET DIAGNOSTICS moved = ROW_COUNT;
        -- The attach validates the range against the new table's rows (all in range)
        -- and re-checks that the DEFAULT partition has none left.
        EXECUTE format('ALTER TABLE interactions ATTACH PARTITION %I '
                       'FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF interactions '
                       'FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    END IF;
    RETURN moved;
END;
$$;

-- As in 001 (same signature and result), creating each partition through
-- recs_create_interaction_partition so that rows waiting in the DEFAULT partition move
-- into it.
CREATE OR REPLACE FUNCTION recs_ensure_interaction_partitions(
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
            PERFORM recs_create_interaction_partition(
                mname, m::timestamp AT TIME ZONE 'UTC',
                (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
            d := (m + interval '1 month')::date;
            CONTINUE;
        END IF;
        IF to_regclass(dname) IS NULL THEN
            PERFORM recs_create_interaction_partition(
                dname, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Moves every row of the DEFAULT partition into a partition of its own (a day partition
-- from daily_from on, a month partition before it, as recs_ensure_interaction_partitions
-- decides), creating the partitions. Returns the number of rows moved.
CREATE FUNCTION recs_drain_default_partition(daily_from DATE DEFAULT NULL)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    d  DATE;
    lo DATE;
    hi DATE;
    before BIGINT;
    after BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('recs_interaction_partitions'));
    SELECT count(*), min(("timestamp" AT TIME ZONE 'UTC')::date),
           max(("timestamp" AT TIME ZONE 'UTC')::date)
      INTO before, lo, hi FROM interactions_default;
    IF before = 0 THEN
        RETURN 0;
    END IF;
    -- Only the days that have rows: a stray event from 1971 creates one partition, not
    -- fifty years of them.
    FOR d IN SELECT DISTINCT ("timestamp" AT TIME ZONE 'UTC')::date
             FROM interactions_default ORDER BY 1 LOOP
        PERFORM recs_ensure_interaction_partitions(d, d, COALESCE(daily_from, lo));
    END LOOP;
    SELECT count(*) INTO after FROM interactions_default;
    RETURN before - after;
END;
$$;
