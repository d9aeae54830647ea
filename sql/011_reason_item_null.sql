-- reason_item_id is NULL, never -1, for a reason without an item ("Trending in ...",
-- "New in ...", "Popular in ...", "Recommended for you", "Featured"): an analyst joining
-- it to items gets no false match and no dangling id. The lists keep -1 as the sentinel
-- inside their BIGINT[] arrays (core/constants.py NO_REASON_ITEM: the pipeline's numpy,
-- Parquet and Spark arrays hold no nulls); the view and the reader translate it.
CREATE OR REPLACE VIEW live_recommendations AS
SELECT r.user_id, u.pos::int AS rank, u.item_id, u.score, u.reason,
       NULLIF(u.reason_item_id, -1) AS reason_item_id,
       r.model_version, r.computed_at
FROM serving_state s
JOIN recommendations r ON r.model_version = s.live_version
CROSS JOIN LATERAL unnest(r.items, r.scores, r.reasons, r.reason_item_ids)
     WITH ORDINALITY AS u(item_id, score, reason, reason_item_id, pos);
