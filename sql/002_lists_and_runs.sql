-- Model runs, published lists (one partition per model version) and the live switch.

CREATE TABLE model_runs (
    model_version  VARCHAR(40) PRIMARY KEY,
    kind           VARCHAR(20) NOT NULL DEFAULT 'daily',
    logical_date   DATE,
    params         JSONB NOT NULL DEFAULT '{}'::jsonb,
    config_digest  VARCHAR(20),
    data_from      TIMESTAMPTZ,
    data_until     TIMESTAMPTZ,
    n_users        BIGINT,
    n_items        BIGINT,
    n_interactions BIGINT,
    metrics        JSONB NOT NULL DEFAULT '{}'::jsonb,
    artifacts      JSONB NOT NULL DEFAULT '{}'::jsonb,
    status         VARCHAR(20) NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'evaluated', 'rejected', 'published',
                                     'retired', 'failed')),
    message        TEXT,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ,
    published_at   TIMESTAMPTZ
);
CREATE INDEX model_runs_logical_date_idx ON model_runs (logical_date);

-- Per-user lists: one row per (version, user) holding the ranked list as parallel arrays,
-- so that serving is one primary-key read. Analysts use the live_recommendations view.
CREATE TABLE recommendations (
    model_version   VARCHAR(40) NOT NULL,
    user_id         BIGINT NOT NULL,
    items           BIGINT[] NOT NULL,
    scores          REAL[] NOT NULL,
    reasons         TEXT[] NOT NULL,
    reason_item_ids BIGINT[] NOT NULL,
    history_tail    BIGINT[] NOT NULL DEFAULT '{}',  -- the user's newest items, newest first
    computed_at     TIMESTAMPTZ NOT NULL
) PARTITION BY LIST (model_version);

CREATE TABLE similar_items (
    model_version   VARCHAR(40) NOT NULL,
    item_id         BIGINT NOT NULL,
    items           BIGINT[] NOT NULL,
    scores          REAL[] NOT NULL,
    reasons         TEXT[] NOT NULL,
    computed_at     TIMESTAMPTZ NOT NULL
) PARTITION BY LIST (model_version);

-- Non-personal lists: 'popular', 'trending', 'trending:category:<name>'.
CREATE TABLE trending (
    model_version   VARCHAR(40) NOT NULL,
    list_name       TEXT NOT NULL,
    items           BIGINT[] NOT NULL,
    scores          REAL[] NOT NULL,
    reasons         TEXT[] NOT NULL,
    computed_at     TIMESTAMPTZ NOT NULL
) PARTITION BY LIST (model_version);

-- Which version readers see. One row; switched in the same transaction that attaches
-- a new version's partitions.
CREATE TABLE serving_state (
    singleton        BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    live_version     VARCHAR(40) REFERENCES model_runs (model_version),
    previous_version VARCHAR(40) REFERENCES model_runs (model_version),
    switched_at      TIMESTAMPTZ
);
INSERT INTO serving_state (singleton) VALUES (true);

-- Analyst views: one row per list position of the live version.
CREATE VIEW live_recommendations AS
SELECT r.user_id, u.pos::int AS rank, u.item_id, u.score, u.reason, u.reason_item_id,
       r.model_version, r.computed_at
FROM serving_state s
JOIN recommendations r ON r.model_version = s.live_version
CROSS JOIN LATERAL unnest(r.items, r.scores, r.reasons, r.reason_item_ids)
     WITH ORDINALITY AS u(item_id, score, reason, reason_item_id, pos);

CREATE VIEW live_similar_items AS
SELECT r.item_id AS source_item_id, u.pos::int AS rank, u.item_id, u.score, u.reason,
       r.model_version, r.computed_at
FROM serving_state s
JOIN similar_items r ON r.model_version = s.live_version
CROSS JOIN LATERAL unnest(r.items, r.scores, r.reasons)
     WITH ORDINALITY AS u(item_id, score, reason, pos);

CREATE VIEW live_trending AS
SELECT r.list_name, u.pos::int AS rank, u.item_id, u.score, u.reason,
       r.model_version, r.computed_at
FROM serving_state s
JOIN trending r ON r.model_version = s.live_version
CROSS JOIN LATERAL unnest(r.items, r.scores, r.reasons)
     WITH ORDINALITY AS u(item_id, score, reason, pos);
