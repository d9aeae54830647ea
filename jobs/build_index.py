"""Build FAISS indices over item factors and record their recall against exact search.

Two spaces over the same factors: inner product (user -> item retrieval) and cosine
(item -> item similarity). Exact below ``exact_max`` items, HNSW above.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from core import lake
from jobs.train_als import load_factors
from models import index as ann


def save_index(index, path: Path) -> None:
    import faiss

    tmp = lake.atomic_file(path)
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def load_index(path: str):
    import faiss

    return faiss.read_index(str(path))


def run(day: dt.date, factors_dir: str, *, exact_max: int, seed: int,
        lake_root: Path | None = None) -> dict:
    factors = load_factors(Path(factors_dir))
    out = lake.partition("index", day, lake_root)
    meta = {"n_items": int(len(factors.item_ids)), "dim": int(factors.item_factors.shape[1])}
    queries_rows = ann.sample_queries(len(factors.user_ids), seed=seed)
    item_rows = ann.sample_queries(len(factors.item_ids), seed=seed)
    with lake.atomic_dir(out) as tmp:
        for name, normalize, queries in (
                ("items_ip", False, factors.user_factors[queries_rows]),
                ("items_cos", True, factors.item_factors[item_rows])):
            cfg = ann.IndexConfig(exact_max=exact_max, normalize=normalize)
            index = ann.build(factors.item_factors, cfg)
            recall = ann.recall_vs_exact(index, factors.item_factors, queries, k=10,
                                         normalize=normalize)
            save_index(index, tmp / f"{name}.faiss")
            meta[name] = {"kind": ann.kind(index), "recall@10": round(recall, 4),
                          "normalize": normalize}
        np.save(tmp / "item_ids.npy", factors.item_ids)
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    return {"dir": str(out), "items_ip": str(out / "items_ip.faiss"),
            "items_cos": str(out / "items_cos.faiss"), "meta": meta}
