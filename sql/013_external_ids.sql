-- Generic import (issue 14): clients' own ids, and the item fields the import schema has.
--
-- An id that is a plain positive integer below 10^15 is its own internal id (MovieLens,
-- synthetic data and every integer client keep working unchanged). Any other id (the
-- spec's 'item_12345', 'user_789', an integer of 10^15 or more) is given an internal id
-- from external_id_seq, which starts at 10^15, so the two ranges never meet (core/ids.py).
-- A mapping, once stored, never changes and is never deleted: the same external id is
-- the same internal id in every load, every event post and every answer.
CREATE SEQUENCE external_id_seq START WITH 1000000000000000 MINVALUE 1000000000000000;

CREATE TABLE external_ids (
    entity_type VARCHAR(10) NOT NULL CHECK (entity_type IN ('user', 'item')),
    external_id TEXT NOT NULL CHECK (length(external_id) BETWEEN 1 AND 256),
    internal_id BIGINT NOT NULL CHECK (internal_id >= 1000000000000000),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, external_id),
    UNIQUE (entity_type, internal_id)
);

-- The import schema's item fields beyond the spec's (docs/data.md).
ALTER TABLE items ADD COLUMN description TEXT;
ALTER TABLE items ADD COLUMN attributes JSONB NOT NULL DEFAULT '{}'::jsonb;

-- The pipeline (loaders) allocates and reads mappings.
GRANT SELECT, INSERT ON external_ids TO recs_pipeline;
GRANT USAGE, SELECT ON SEQUENCE external_id_seq TO recs_pipeline;

-- The reader: it answers with the client's ids (SELECT) and maps the new ids of posted
-- events (INSERT, and the sequence). Nothing else: no UPDATE or DELETE of a mapping.
GRANT SELECT, INSERT ON external_ids TO recs_reader;
GRANT USAGE ON SEQUENCE external_id_seq TO recs_reader;
