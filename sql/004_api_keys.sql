-- API keys for writing events, admin endpoints and (when configured) reads.
-- The key itself is never stored: only a public lookup prefix, a per-key random salt and
-- sha256(salt || secret) (serve/apikeys.py explains the choice). Managed with `recs keys`.

CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix      TEXT NOT NULL UNIQUE CHECK (prefix ~ '^[0-9a-f]{12}$'),
    salt        BYTEA NOT NULL,
    key_hash    BYTEA NOT NULL CHECK (length(key_hash) = 32),
    scopes      TEXT[] NOT NULL
                CHECK (cardinality(scopes) > 0
                       AND scopes <@ ARRAY['read', 'events', 'admin']::TEXT[]),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
-- One active key per name; a revoked name can be reused.
CREATE UNIQUE INDEX api_keys_active_name_idx ON api_keys (name) WHERE revoked_at IS NULL;
