"""Names shared by every layer: column names, event types, defaults."""

from __future__ import annotations

USER_COL = "user_id"
ITEM_COL = "item_id"
RATING_COL = "rating"
TIMESTAMP_COL = "ts"
EVENT_TYPE_COL = "event_type"
PREDICTION_COL = "score"

EVENT_TYPES: tuple[str, ...] = ("click", "view", "purchase", "rating")

# Confidence of an implicit event, before the rating term (see models/confidence.py).
EVENT_WEIGHTS: dict[str, float] = {"click": 1.0, "view": 2.0, "purchase": 4.0, "rating": 1.0}

POPULAR_REASON = "Popular right now"
# reason_item_ids entry of a reason that names no item ("Trending in ...", "New in ...")
# inside the stored arrays; the reader and the analyst view answer null for it.
NO_REASON_ITEM = -1
DEFAULT_K = 10
"""Cut-off for offline metrics (precision@k and friends)."""
