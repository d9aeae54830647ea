-- Catalog and user APIs (issue 14): PUT /api/v1/items, PUT /api/v1/users/{id}.

-- An item can be withdrawn without being deleted: the reader leaves it out of every answer
-- (serve/blocks.py, as a block rule) and the jobs out of every list (jobs/rules.py).
ALTER TABLE items ADD COLUMN available BOOLEAN NOT NULL DEFAULT true;
CREATE INDEX items_unavailable_idx ON items (item_id) WHERE NOT available;

-- A key scope for catalog writers (the catalog endpoints take 'catalog' or 'admin').
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (cardinality(scopes) > 0
           AND scopes <@ ARRAY['read', 'events', 'catalog', 'admin']::TEXT[]);

-- The reader writes the catalog's own fields and the users' onboarding preferences, by
-- column: never popularity, never a user's country or creation time, never a DELETE.
GRANT INSERT (item_id, title, category, tags, description, attributes, available,
              created_at, updated_at) ON items TO recs_reader;
GRANT UPDATE (title, category, tags, description, attributes, available, updated_at)
    ON items TO recs_reader;
-- The cold-start answer reads a user's preferences (and nothing else of users).
GRANT SELECT (user_id, preferences) ON users TO recs_reader;
GRANT INSERT (user_id, preferences) ON users TO recs_reader;
GRANT UPDATE (preferences) ON users TO recs_reader;
