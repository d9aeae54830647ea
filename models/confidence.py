"""Implicit-feedback confidence of interaction events (pure compute).

Each event contributes a weight from its type; a rating scales it by ``rating / 5`` with a
floor, so a 5-star rating counts fully and a half-star still counts a little. Events of
one (user, item) pair add up, sublinearly past 1. ALS then uses ``1 + alpha * weight`` as
its confidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import EVENT_WEIGHTS

RATING_FLOOR = 0.2


def event_weights(event_type: pd.Series, rating: pd.Series) -> np.ndarray:
    """Weight of each event from its type and optional rating."""
    base = event_type.map(EVENT_WEIGHTS).astype("float64")
    if base.isna().any():
        bad = event_type[base.isna()].iloc[0]
        raise ValueError(f"unknown event_type {bad!r}")
    r = pd.to_numeric(rating, errors="coerce").to_numpy(dtype="float64")
    scale = np.where(np.isnan(r), 1.0, np.maximum(r / 5.0, RATING_FLOOR))
    return base.to_numpy() * scale


def aggregate_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """Sum event weights per (user, item); keep the pair's latest timestamp.

    ``events`` has user_id, item_id, event_type, rating, timestamp. Returns user_id,
    item_id, weight, timestamp, in order of first appearance (stable, deterministic).
    """
    w = event_weights(events["event_type"], events["rating"])
    frame = pd.DataFrame({"user_id": events["user_id"].to_numpy(),
                          "item_id": events["item_id"].to_numpy(),
                          "weight": w, "timestamp": events["timestamp"].to_numpy()})
    out = (frame.groupby(["user_id", "item_id"], sort=False, as_index=False)
           .agg(weight=("weight", "sum"), timestamp=("timestamp", "max")))
    out["weight"] = sublinear(out["weight"].to_numpy())
    return out


def sublinear(w: np.ndarray) -> np.ndarray:
    """Weights above 1 grow logarithmically: ``1 + ln(w)``; weights up to 1 are kept.

    A pair viewed hundreds of times should count more than one viewed once, but not
    hundreds of times more (Hu, Koren and Volinsky use a log scale for the same reason).
    A single rating (weight <= 1) is unchanged.
    """
    w = np.asarray(w, dtype="float64")
    return np.where(w > 1.0, 1.0 + np.log(np.maximum(w, 1.0)), w)
