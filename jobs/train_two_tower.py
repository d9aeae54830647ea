"""Train the two-tower model (models/two_tower.py) and export its vectors and FAISS index.

``run()`` is the daily job: it reads the (user, item, timestamp) pairs (the model uses no
weight: each pair is one positive) and the
items snapshot (item_id, title, category, tags) from Parquet, optionally the users'
countries and the items' text embeddings, trains, and writes into ``out_dir``, replaced
atomically:

* ``model.pt``, ``config.json``: the model (a tensor state dict and its JSON config);
* ``users.parquet``, ``items.parquet``: ``id``, ``vector`` (the layout of the ALS
  factors, so ``jobs.train_als.load_factors`` reads them);
* ``items_ip.faiss``, ``item_ids.npy``, ``meta.json``: the model's own inner-product
  index over its item vectors, with its recall@10 against exact search.

``evaluate_protocol()`` trains and scores the model on the benchmark protocol of
``recs evaluate`` (Microsoft Recommenders' stratified split, top-10 excluding training
items) for ``bench/two_tower.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.two_tower import TwoTowerConfig

log = logging.getLogger("recs.train_two_tower")
PAIR_COLUMNS = ["user_id", "item_id", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "category", "tags"]
K = 10


def catalog(items: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The items snapshot, plus a featureless row for any paired item missing from it."""
    missing = np.setdiff1d(pairs["item_id"].unique(), items["item_id"].to_numpy())
    if len(missing):
        log.warning("%d paired item(s) are not in the items snapshot; they get no features",
                    len(missing))
        extra = pd.DataFrame({"item_id": missing, "title": None, "category": None,
                              "tags": [[] for _ in missing]})
        items = pd.concat([items, extra], ignore_index=True)
    return items.sort_values("item_id", kind="stable").reset_index(drop=True)


def text_matrix(items: pd.DataFrame, cache_dir: Path | None = None) -> np.ndarray:
    """Text embeddings of ``"<title>. <category>. <tags>"`` per item (models/text.py).

    Cached as ``<cache_dir>/<sha256 of the model version and texts>.npy`` (default
    ``var/cache/text``), so unchanged items are not embedded again on every run.
    """
    from core import lake
    from core import settings as settings_mod
    from models import text

    texts = [text.item_text(t, c, list(g) if g is not None else [])
             for t, c, g in zip(items["title"], items["category"], items["tags"], strict=True)]
    key = hashlib.sha256("\n".join([text.MODEL_VERSION, *texts]).encode()).hexdigest()
    cache_dir = Path(cache_dir or Path(settings_mod.get().home) / "cache" / "text")
    path = cache_dir / f"{key[:32]}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = text.encode(texts)
    tmp = lake.atomic_file(path)
    with open(tmp, "wb") as f:
        np.save(f, vectors)
    tmp.replace(path)
    log.info("embedded %d item texts in %.1fs -> %s", len(texts),
             time.perf_counter() - started, path)
    return vectors


def store_vectors(store: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Rows of a text store (item_id, vector) in the order of ``item_ids`` (zeros for an
    item without a vector yet)."""
    from models.signals import align_rows

    vecs = np.stack(store["vector"].to_numpy()).astype("float32") if len(store) else \
        np.zeros((0, 1), "float32")
    return align_rows(store["item_id"].to_numpy(), vecs, item_ids)


def _vectors_frame(ids: np.ndarray, vectors: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"id": np.asarray(ids, dtype="int64")})
    frame["vector"] = list(np.asarray(vectors, dtype="float32"))
    return frame


def run(pairs_path: str, items_path: str, out_dir: str,
        config: TwoTowerConfig = TwoTowerConfig(), *, users_path: str | None = None,
        text: bool = False, cache_dir: Path | None = None, text_store: str | None = None,
        exact_max: int = 50_000) -> dict:
    """Train on the pairs at ``pairs_path``; write the model, vectors and index to ``out_dir``.

    ``users_path``: Parquet with user_id, country (optional); ``text``: add item text
    embeddings (models/text.py, cached); ``text_store``: read them from the lake's text
    store (item_id, vector) instead, as the daily DAG does. Returns paths and figures.
    """
    import faiss

    from core import lake
    from models import index as ann
    from models import two_tower as tt

    pairs = pd.read_parquet(pairs_path, columns=PAIR_COLUMNS)
    if pairs.empty:
        raise ValueError(f"{pairs_path}: no pairs; nothing to train on")
    items = catalog(pd.read_parquet(items_path, columns=ITEM_COLUMNS), pairs)
    countries = None
    if users_path:
        users = pd.read_parquet(users_path, columns=["user_id", "country"])
        countries = users.set_index("user_id")["country"]
    vectors = text_matrix(items, cache_dir) if text and not text_store else None
    if text_store:
        vectors = store_vectors(pd.read_parquet(text_store), items["item_id"].to_numpy())
    started = time.perf_counter()
    # models.two_tower logs each epoch's loss and time (logger recs.two_tower).
    model, item_feats, user_feats = tt.fit(pairs, items, config, countries=countries,
                                           text=vectors)
    train_s = time.perf_counter() - started
    item_vecs = model.item_vectors(item_feats)
    user_vecs = model.user_vectors(user_feats)
    final = Path(out_dir)
    queries = user_vecs[ann.sample_queries(len(user_vecs), seed=config.seed)]
    with lake.atomic_dir(final) as tmp:
        model.save(tmp)
        _vectors_frame(user_feats.user_ids, user_vecs).to_parquet(tmp / "users.parquet",
                                                                  index=False)
        _vectors_frame(item_feats.item_ids, item_vecs).to_parquet(tmp / "items.parquet",
                                                                  index=False)
        index = ann.build(item_vecs, ann.IndexConfig(exact_max=exact_max))
        recall = ann.recall_vs_exact(index, item_vecs, queries, k=K)
        faiss.write_index(index, str(tmp / "items_ip.faiss"))
        np.save(tmp / "item_ids.npy", item_feats.item_ids)
        meta = {"n_users": len(user_feats), "n_items": len(item_feats), "n_pairs": len(pairs),
                "dim": config.dim, "text": bool(text or text_store),
                "train_seconds": round(train_s, 1),
                "loss": model.training_log[-1]["loss"], "config_digest": config.digest(),
                "items_ip": {"kind": ann.kind(index), "recall@10": round(recall, 4)}}
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    log.info("two-tower: %d users, %d items, %d pairs in %.1fs; index %s recall@10 %.4f",
             len(user_feats), len(item_feats), len(pairs), train_s, meta["items_ip"]["kind"],
             recall)
    names = ("model.pt", "config.json", "users.parquet", "items.parquet", "items_ip.faiss")
    return {"dir": str(final), **{n.split(".")[0]: str(final / n) for n in names}, **meta}


# --- The benchmark protocol ---------------------------------------------------------------


def protocol_data(path: Path | str, holdout: float = 0.25, seed: int = 42):
    """(pairs, train, test, items) of a MovieLens folder under the benchmark protocol.

    Pairs are made from the ratings exactly as in the DAG's prepare step; the split is
    Microsoft Recommenders' stratified split by item. ``items`` has item_id, title,
    category (first genre) and tags (genres and user tags), as ``recs load`` stores them.
    """
    from jobs.ingest import movielens
    from jobs.prepare import split_pairs
    from models.confidence import aggregate_pairs

    data = movielens.read(path)
    events = pd.concat(list(data.iter_events()), ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    pairs = aggregate_pairs(events)
    train, test = split_pairs(pairs, "stratified", holdout, seed)
    items = pd.DataFrame([row[:4] for row in data.items()], columns=ITEM_COLUMNS)
    return pairs, train, test, items


def evaluate_protocol(path: Path | str, config: TwoTowerConfig = TwoTowerConfig(), *,
                      text: bool = False, cache_dir: Path | None = None,
                      data=None) -> dict:
    """Two-tower and popularity metrics at 10 on the benchmark protocol of ``path``.

    Scored as ``recs evaluate`` scores ALS: the test users that have training pairs, an
    exact inner-product index over the items of the training pairs, training items
    excluded. ``data`` reuses the output of :func:`protocol_data`.
    """
    from jobs import evaluate as ev
    from jobs.train_als import Factors
    from models import two_tower as tt
    from models.metrics import evaluate_all, named
    from models.popularity import popularity_predictions

    pairs, train, test, items = data if data is not None else protocol_data(path)
    items = catalog(items, pairs)
    vectors = text_matrix(items, cache_dir) if text else None
    started = time.perf_counter()
    model, item_feats, user_feats = tt.fit(train, items, config, text=vectors)
    train_s = time.perf_counter() - started
    keep = np.isin(item_feats.item_ids, train["item_id"].unique())
    factors = Factors(user_feats.user_ids, model.user_vectors(user_feats),
                      item_feats.item_ids[keep], model.item_vectors(item_feats)[keep])
    test_users = np.intersect1d(test["user_id"].to_numpy(), train["user_id"].to_numpy())
    n_catalog = int(pairs["item_id"].nunique())
    truth = test[["user_id", "item_id"]]
    two_tower = ev.als_predictions(factors, train, test_users, K)
    popular = popularity_predictions(train, test_users, K)
    return {"dataset": str(path), "n_train": len(train), "n_test": len(test),
            "n_users_scored": len(test_users), "config": config.to_dict(), "text": bool(text),
            "train_seconds": round(train_s, 1), "epochs": model.training_log,
            "results": {
                "two_tower": named(evaluate_all(truth, two_tower, K, n_catalog), K),
                "popularity": named(evaluate_all(truth, popular, K, n_catalog), K)}}


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.train_two_tower --pairs P --items I --out D [--users U] [--text]
    [--text-store S] [--config JSON] [--exact-max N] [--result FILE]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--users")
    p.add_argument("--text", action="store_true", help="add item text embeddings")
    p.add_argument("--text-store", help="read the item text vectors from this store")
    p.add_argument("--epochs", type=int, default=TwoTowerConfig.epochs)
    p.add_argument("--seed", type=int, default=TwoTowerConfig.seed)
    p.add_argument("--config", help="the whole TwoTowerConfig as JSON (wins over "
                                    "--epochs and --seed)")
    p.add_argument("--exact-max", type=int, default=50_000)
    p.add_argument("--result", help="write the result as JSON to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = TwoTowerConfig(**json.loads(args.config)) if args.config else \
        TwoTowerConfig(epochs=args.epochs, seed=args.seed)
    result = run(args.pairs, args.items, args.out, config, users_path=args.users,
                 text=args.text, text_store=args.text_store, exact_max=args.exact_max)
    if args.result:
        Path(args.result).write_text(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
