"""Ingest: MovieLens readers, a synthetic generator and the bulk loader into Postgres.

Readers and the generator yield events as data frames with :data:`EVENT_COLUMNS`
(``ts`` in unix seconds, ``rating`` NaN where absent); :mod:`jobs.ingest.load` writes them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

EVENT_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "rating", "ts")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x5EC5_1D5E_ED00_0001)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_u64(col: ArrayLike) -> np.ndarray:
    a = np.asarray(col)
    if a.dtype.kind == "f":
        return (a.astype(np.float64) + 0.0).view(np.uint64)  # bit pattern; -0.0 -> 0.0
    return a.astype(np.int64).view(np.uint64)


def stable_ids(*columns: ArrayLike) -> np.ndarray:
    """A stable non-negative 63-bit id per row, hashed from integer or float columns.

    The same values always give the same id on any machine and in any process (no
    Python ``hash`` randomisation), so a reload of the same rows produces the same keys.
    """
    if not columns:
        raise ValueError("stable_ids needs at least one column")
    cols = [_as_u64(c) for c in columns]
    with np.errstate(over="ignore"):
        h = np.full(cols[0].shape, _SEED, dtype=np.uint64)
        for c in cols:
            h = _mix64(h ^ _mix64(c + _GOLDEN))
    return (h >> np.uint64(1)).astype(np.int64)
