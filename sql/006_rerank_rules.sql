-- Business rules for the re-ranker (jobs/rules.py, docs/rules.md), managed by operators.
-- The daily precompute reads this table, together with the file named by RECS_RULES_FILE,
-- when it builds the lists; a change takes effect at the next precompute.
--
--   block_item      value = item id: the item is never shown
--   block_category  value = category name (exact): no item of it is shown
--   block_tag       value = tag (case-insensitive): the content policy, no item carrying it
--   pin             value = item id, slot = 1-based position in every list it can enter
--
-- One row per (kind, value): pinning an item again means updating its slot.
CREATE TABLE rerank_rules (
    rule_id     BIGSERIAL PRIMARY KEY,
    kind        VARCHAR(20) NOT NULL
                CHECK (kind IN ('block_item', 'block_category', 'block_tag', 'pin')),
    value       TEXT NOT NULL,
    slot        INT NULL CHECK (slot IS NULL OR slot >= 1),
    note        TEXT,                                  -- who asked, and why
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (kind, value),
    -- Rows the re-ranker could not use are refused here rather than at precompute time.
    CONSTRAINT rerank_rules_slot_iff_pin CHECK ((kind = 'pin') = (slot IS NOT NULL)),
    CONSTRAINT rerank_rules_item_id CHECK (kind NOT IN ('block_item', 'pin')
                                           OR value ~ '^-?[0-9]{1,18}$'),
    CONSTRAINT rerank_rules_value_set CHECK (btrim(value) <> '')
);
