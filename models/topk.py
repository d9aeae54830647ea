"""Top-K retrieval with exclusion of consumed items, and reasons for each pick.

Pure compute over arrays: the caller passes an index (models/index.py), user vectors and,
per user, the item rows to exclude (:func:`recommend` does both from ALS factors and the
consumed pairs). The search asks for ``k + len(excluded)`` hits so
that exclusion never leaves a list short when enough items exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models import index as ann


def top_k_excluding(index, user_vectors: np.ndarray, exclude_rows: Sequence[np.ndarray],
                    k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the best ``k`` item rows not in ``exclude_rows[u]``.

    Returns (rows, scores), each ``(n_users, k)``; rows are -1 where fewer than k items
    remain. Users are searched in batches grouped by how many items they exclude.
    """
    n = len(user_vectors)
    k_eff = min(k, index.ntotal)
    rows_out = np.full((n, k), -1, dtype="int64")
    scores_out = np.full((n, k), -np.inf, dtype="float32")
    n_excl = np.array([len(e) for e in exclude_rows], dtype="int64")
    order = np.argsort(n_excl, kind="stable")
    for start in range(0, n, batch):
        users = order[start:start + batch]
        want = int(min(index.ntotal, k_eff + n_excl[users].max()))
        scores, rows = ann.search(index, user_vectors[users], want)
        for j, u in enumerate(users):
            r, s = rows[j], scores[j]
            keep = (r >= 0) & ~np.isin(r, exclude_rows[u])
            r, s = r[keep][:k], s[keep][:k]
            rows_out[u, :len(r)] = r
            scores_out[u, :len(s)] = s
    return rows_out, scores_out


def because_items(item_vectors: np.ndarray, rec_rows: np.ndarray,
                  history_rows: Sequence[np.ndarray]) -> np.ndarray:
    """For each recommended item, the history item most similar to it (cosine).

    ``rec_rows`` is ``(n_users, k)`` (-1 = empty slot); ``history_rows[u]`` the user's
    history item rows. Returns item rows ``(n_users, k)``, -1 where there is none.
    """
    norms = np.linalg.norm(item_vectors, axis=1, keepdims=True)
    unit = item_vectors / np.where(norms == 0, 1.0, norms)
    out = np.full(rec_rows.shape, -1, dtype="int64")
    for u in range(len(rec_rows)):
        hist = history_rows[u]
        valid = rec_rows[u] >= 0
        if len(hist) == 0 or not valid.any():
            continue
        sims = unit[rec_rows[u][valid]] @ unit[hist].T
        out[u, valid] = hist[np.argmax(sims, axis=1)]
    return out


def rows_per_user(pairs: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                  newest_first: bool = False) -> list[np.ndarray]:
    """Item rows (positions in ``item_ids``) of each user's pairs, in ``user_ids`` order."""
    item_pos = pd.Series(np.arange(len(item_ids)), index=item_ids)
    frame = pairs[["user_id", "item_id", "timestamp"]].copy()
    frame["row"] = item_pos.reindex(frame["item_id"].to_numpy()).to_numpy()
    frame = frame.dropna(subset=["row"])
    if newest_first:
        frame = frame.sort_values(["user_id", "timestamp", "item_id"],
                                  ascending=[True, False, True], kind="stable")
    grouped = frame.groupby("user_id")["row"].apply(lambda s: s.to_numpy(dtype="int64"))
    empty = np.empty(0, dtype="int64")
    return [grouped.get(u, empty) for u in user_ids]


def recommend(factors, index, consumed: pd.DataFrame, k: int,
              users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_ids, item_rows (n, k), scores (n, k)) excluding each user's consumed items.
    ``factors``: user_ids, user_factors, item_ids (the Factors layout of jobs/train_als.py);
    ``index``: over its item factors."""
    if users is None:
        user_rows = np.arange(len(factors.user_ids))
    else:
        pos = pd.Series(np.arange(len(factors.user_ids)), index=factors.user_ids)
        user_rows = pos.reindex(users).dropna().to_numpy(dtype="int64")
    user_ids = factors.user_ids[user_rows]
    excl = rows_per_user(consumed, user_ids, factors.item_ids)
    rows, scores = top_k_excluding(index, factors.user_factors[user_rows], excl, k)
    return user_ids, rows, scores
