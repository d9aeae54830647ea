-- Experiments (issue 13): definitions, QA overrides, the exposure log, daily results.
--
-- An experiment lives in a layer; its users are those whose layer position (a seeded
-- hash, models/assignment.py) falls in [layer_low, layer_high), so experiments of one
-- layer with disjoint ranges never share a user, and layers are independent. Variants:
-- [{"key": "control", "weight": 0.5, "changes": {}}, {"key": "treatment", ...}], weights
-- summing to 1; "changes" say what the variant serves differently (a published
-- model_version, a ranking configuration). kind 'interleaving' serves one team-draft
-- interleaved list of its first two (or more) variants to every user in its range.
CREATE TABLE experiments (
    experiment_key  TEXT PRIMARY KEY
                    CHECK (experiment_key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    layer           TEXT NOT NULL DEFAULT 'default' CHECK (btrim(layer) <> ''),
    salt            TEXT NOT NULL DEFAULT '',
    layer_low       DOUBLE PRECISION NOT NULL DEFAULT 0,
    layer_high      DOUBLE PRECISION NOT NULL DEFAULT 1,
    kind            TEXT NOT NULL DEFAULT 'ab' CHECK (kind IN ('ab', 'interleaving')),
    variants        JSONB NOT NULL CHECK (jsonb_typeof(variants) = 'array'),
    status          TEXT NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'running', 'stopped')),
    owner           TEXT NOT NULL DEFAULT '',
    primary_metric  TEXT NOT NULL DEFAULT 'ctr',
    starts_at       TIMESTAMPTZ,
    ends_at         TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT experiments_range CHECK (0 <= layer_low AND layer_low < layer_high
                                        AND layer_high <= 1),
    CONSTRAINT experiments_dates CHECK (ends_at IS NULL OR starts_at IS NULL
                                        OR starts_at < ends_at)
);

-- QA: force a user into a variant of an experiment (beats the holdout and the ranges).
CREATE TABLE experiment_overrides (
    experiment_key  TEXT NOT NULL REFERENCES experiments ON DELETE CASCADE,
    user_id         BIGINT NOT NULL,
    variant         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_key, user_id)
);

-- Every list served: written off the request path in batches (COPY). Positions are the
-- array positions; propensities (the logging policy's probability of each item at its
-- position) and teams (interleaving: the variant index that contributed each item) are
-- parallel to items. Clicks join by request_id (interactions.request_id).
CREATE TABLE exposures (
    request_id      UUID NOT NULL,
    served_at       TIMESTAMPTZ NOT NULL,
    user_id         BIGINT NOT NULL,
    endpoint        TEXT NOT NULL,
    experiment_key  TEXT,
    variant         TEXT,
    model_version   TEXT,
    items           BIGINT[] NOT NULL,
    propensities    REAL[],
    teams           SMALLINT[],
    PRIMARY KEY (request_id)
);
CREATE INDEX exposures_served_at_brin ON exposures USING brin (served_at);
CREATE INDEX exposures_experiment_idx ON exposures (experiment_key, served_at)
    WHERE experiment_key IS NOT NULL;

-- An event may name the request whose list it answers (POST /api/v1/events request_id).
ALTER TABLE interactions ADD COLUMN request_id UUID;

-- The analysis DAG's output: one row per (experiment, day, variant, metric, method).
CREATE TABLE experiment_results (
    experiment_key  TEXT NOT NULL,
    day             DATE NOT NULL,
    variant         TEXT NOT NULL,
    metric          TEXT NOT NULL,
    method          TEXT NOT NULL,          -- welch, cuped, sequential, interleaving
    users           BIGINT NOT NULL,
    exposures       BIGINT NOT NULL,
    mean            DOUBLE PRECISION,
    diff            DOUBLE PRECISION,       -- against control
    low             DOUBLE PRECISION,
    high            DOUBLE PRECISION,
    p_value         DOUBLE PRECISION,
    p_adjusted      DOUBLE PRECISION,       -- Holm or Benjamini-Hochberg over metrics
    details         JSONB NOT NULL DEFAULT '{}',
    computed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_key, day, variant, metric, method)
);

CREATE TABLE experiment_decisions (
    experiment_key  TEXT NOT NULL,
    day             DATE NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('ship', 'stop', 'keep running')),
    reason          TEXT NOT NULL,
    srm_p_value     DOUBLE PRECISION,
    details         JSONB NOT NULL DEFAULT '{}',
    computed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_key, day)
);

-- The pipeline owns and writes all of it (objects created by another user included).
GRANT SELECT, INSERT, UPDATE, DELETE ON experiments, experiment_overrides, exposures,
    experiment_results, experiment_decisions TO recs_pipeline;
-- The reader routes (reads definitions and overrides) and logs (inserts exposures).
GRANT SELECT ON experiments, experiment_overrides TO recs_reader;
GRANT INSERT ON exposures TO recs_reader;
-- Analysts read definitions, exposures and results.
GRANT SELECT ON experiments, exposures, experiment_results, experiment_decisions
    TO recs_analyst;
