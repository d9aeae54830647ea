"""Daily text embeddings of the items snapshot, incremental (all-MiniLM-L6-v2, offline).

The lake's text store (``text_embeddings/<model>/items.parquet``: item_id, vector,
text_sha) is shared with the hourly DAG, which embeds items as they are added or changed.
This step makes the store complete for the day's snapshot: it embeds only the items whose
text (title, category, tags) has no vector yet or changed since it was embedded (by the
SHA-256 of the text), writes the store and upserts those vectors into ``embeddings``
(``entity_type 'item'``, ``model_ver`` = the text model's version).

The store is read, extended and written under the hourly DAG's advisory lock, so daily
runs of several dates (a backfill) and hourly runs never overwrite each other's vectors:
each item's vector is computed once, and every run that reads it reads the same floats
(MiniLM's output moves in the last bits with the batch an item is embedded in).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core import db
from jobs import hourly
from models import text as text_model

log = logging.getLogger("recs.text_embeddings")


def text_sha(texts: Sequence[str]) -> np.ndarray:
    return np.array([hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts], "object")


def run(items_path: str, *, dsn: str | None = None, lake_root: Path | None = None,
        encoder: Callable[[Sequence[str]], np.ndarray] | None = None) -> dict:
    t0 = time.perf_counter()
    items = pd.read_parquet(items_path, columns=["item_id", "title", "category", "tags"])
    texts = [text_model.item_text(t, c, list(g) if g is not None else [])
             for t, c, g in zip(items["title"], items["category"], items["tags"], strict=True)]
    sha = text_sha(texts)
    path = hourly.text_store_path(lake_root)
    conn = db.connect(dsn)
    try:
        with db.advisory_lock(conn, hourly.LOCK):
            with conn.cursor() as cur:
                store = hourly.read_store(path, cur)
            conn.commit()
            known = pd.Series(store["text_sha"].to_numpy() if "text_sha" in store else
                              np.full(len(store), None, "object"),
                              index=store["item_id"].to_numpy())
            stale = known.reindex(items["item_id"].to_numpy()).to_numpy() != sha
            ids = items["item_id"].to_numpy("int64")[stale]
            todo = [t for t, s in zip(texts, stale, strict=True) if s]
            vectors = (encoder or text_model.encode)(todo) if todo else \
                np.zeros((0, text_model.DIM), "float32")
            if len(ids) or not path.exists():
                merged = hourly.merge_store(store, ids, vectors)
                shas = pd.Series(sha, index=items["item_id"].to_numpy())
                old = known.reindex(merged["item_id"].to_numpy()).to_numpy()
                new = shas.reindex(merged["item_id"].to_numpy()).to_numpy()
                merged["text_sha"] = np.where(pd.isna(new), old, new)
                hourly.write_store(merged, path)
                with conn, conn.cursor() as cur:
                    if len(ids):
                        hourly.upsert_item_vectors(cur, ids, vectors)
                store = merged
    finally:
        conn.close()
    out = {"store": str(path), "embedded": int(len(ids)), "n_items": int(len(store)),
           "model": text_model.MODEL_VERSION, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("text embeddings: %s", out)
    return out
