"""Two-tower model: the logQ term by hand, determinism, cold items, save/load, learning."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jobs import evaluate as ev
from jobs import train_two_tower as job
from jobs.ingest.synthetic import SyntheticConfig, generate_items, iter_events
from jobs.prepare import split_pairs
from jobs.train_als import Factors, load_factors
from models import two_tower as tt
from models.confidence import aggregate_pairs
from models.metrics import evaluate_all
from models.popularity import popularity_predictions

SMALL = tt.TwoTowerConfig(dim=32, hidden=64, history_len=50, epochs=6, batch_size=256,
                          lr=0.01, uniform_negatives=256, threads=1)


@pytest.fixture(scope="module")
def synthetic():
    """Pairs and items of a small synthetic dataset (users prefer categories)."""
    cfg = SyntheticConfig(n_users=400, n_items=300, n_events=30_000, n_categories=6, seed=7)
    events = pd.concat(list(iter_events(cfg)), ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    items = generate_items(cfg)[["item_id", "title", "category", "tags"]]
    return aggregate_pairs(events), items


@pytest.fixture(scope="module")
def trained(synthetic):
    pairs, items = synthetic
    return tt.fit(pairs, items, SMALL)


# --- The loss, on cases small enough to check by hand ----------------------------------------


def test_sampling_log_probs_are_each_items_share_of_the_pairs():
    log_q = tt.sampling_log_probs(np.array([0, 0, 1, 0]), 3)
    # Item 2 has no pairs: it counts as one, so its log-probability stays finite.
    assert log_q == pytest.approx(np.log([3 / 4, 1 / 4, 1 / 4]))


def test_logq_correction_subtracts_each_candidates_log_probability():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])  # 2 positives + 1 extra negative
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    logits = tt.in_batch_logits(u, v, log_q, temperature=0.5)
    expected = [[0.6 / 0.5 - math.log(0.5), 1 / 0.5 - math.log(0.25), 0 - math.log(0.25)],
                [0.8 / 0.5 - math.log(0.5), 0 - math.log(0.25), 1 / 0.5 - math.log(0.25)]]
    assert logits.numpy() == pytest.approx(np.array(expected), abs=1e-6)
    # Without the correction, the popular item would win row 0 less often: the correction
    # lowers a frequent item's logit less than a rare one's.
    plain = tt.in_batch_logits(u, v, None, temperature=0.5)
    assert (logits - plain).numpy() == pytest.approx(-log_q.numpy()[None, :].repeat(2, 0))
    loss = tt.in_batch_loss(logits)
    manual = -np.mean([expected[b][b] - np.log(np.sum(np.exp(expected[b]))) for b in (0, 1)])
    assert float(loss) == pytest.approx(manual, abs=1e-6)


def test_masked_candidates_are_not_negatives_but_the_positive_stays():
    u = torch.eye(2)
    v = torch.eye(2)
    same = torch.tensor([[True, True], [True, True]])  # both rows: same item twice
    logits = tt.in_batch_logits(u, v, None, 1.0, same_item=same)
    assert torch.isinf(logits[0, 1]) and torch.isinf(logits[1, 0])
    assert logits[0, 0] == 1.0 and logits[1, 1] == 1.0


@pytest.mark.parametrize("field, value", [("dim", 0), ("temperature", 0.0),
                                          ("id_dropout", 1.0), ("logq", -1.0),
                                          ("epochs", 1.5), ("lr", float("nan")),
                                          ("max_steps", -1)])
def test_bad_config_values_fail_naming_the_field(field, value):
    with pytest.raises(tt.TwoTowerError, match=field):
        tt.TwoTowerConfig(**{field: value})


# --- Features ---------------------------------------------------------------------------------


def test_user_history_is_newest_first_and_leaves_nothing_else_in():
    pairs = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 10],
                          "timestamp": pd.to_datetime([3, 1, 2, 5], unit="D", utc=True)})
    users = tt.UserFeatures.from_pairs(pairs, history_len=2)
    assert users.user_ids.tolist() == [1, 2]
    assert users.history.tolist() == [[10, 12], [10, 0]]
    assert users.history_count.tolist() == [2, 1]
    assert users.activity[:, 0] == pytest.approx(np.log1p([3, 1]))


# --- Determinism, cold items, save and load ------------------------------------------------------


def test_two_trainings_with_one_seed_give_identical_vectors(synthetic, trained):
    pairs, items = synthetic
    model, item_feats, user_feats = trained
    again, _, _ = tt.fit(pairs, items, SMALL)
    assert np.array_equal(model.item_vectors(item_feats), again.item_vectors(item_feats))
    assert np.array_equal(model.user_vectors(user_feats), again.user_vectors(user_feats))
    assert [h["loss"] for h in model.training_log] == [h["loss"] for h in again.training_log]
    one_epoch = {**SMALL.to_dict(), "epochs": 1}
    seeds = [tt.fit(pairs, items, tt.TwoTowerConfig(**{**one_epoch, "seed": s}))[0]
             for s in (1, 2)]
    assert not np.array_equal(*(m.item_vectors(item_feats) for m in seeds))


def test_the_training_budget_stops_a_fit_within_its_last_epoch(synthetic, trained):
    pairs, items = synthetic
    model, item_feats, _ = trained
    per_epoch = model.training_log[0]["steps"]
    assert [h["steps"] for h in model.training_log] == [per_epoch] * SMALL.epochs
    # A budget of two and a half epochs: two whole epochs, then half of the third.
    budget = 2 * per_epoch + per_epoch // 2
    capped, _, _ = tt.fit(pairs, items, tt.TwoTowerConfig(**{**SMALL.to_dict(),
                                                            "max_steps": budget}))
    assert [h["steps"] for h in capped.training_log] == [per_epoch, per_epoch,
                                                         per_epoch // 2]
    assert tt.training_steps(len(pairs) * 1000, capped.config) == budget
    # A budget the epochs stay under changes nothing: the same fit as no cap at all.
    uncapped, _, _ = tt.fit(pairs, items, tt.TwoTowerConfig(**{**SMALL.to_dict(),
                                                              "max_steps": 0}))
    assert SMALL.max_steps > SMALL.epochs * per_epoch
    assert np.array_equal(uncapped.item_vectors(item_feats), model.item_vectors(item_feats))


def _category_precision(vecs: np.ndarray, queries: np.ndarray, cats: np.ndarray,
                        k: int = 10) -> float:
    sims = vecs[queries] @ vecs.T
    sims[np.arange(len(queries)), queries] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean(cats[top] == cats[queries][:, None]))


def test_an_item_without_its_id_ranks_among_its_category_peers(trained):
    model, item_feats, _ = trained
    vecs = model.item_vectors(item_feats)
    # The same items under ids the model has never seen: features only.
    cold = tt.ItemFeatures(item_feats.item_ids + 10_000_000, item_feats.category,
                           item_feats.tags)
    cold_vecs = model.item_vectors(cold)
    assert np.allclose(np.linalg.norm(cold_vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(cold_vecs, vecs)
    cats = item_feats.category
    rows = np.arange(0, len(cats), 5)
    # Each feature-only vector's nearest warm items are mostly of its category; by chance
    # (6 categories) about one in six would be.
    sims = cold_vecs[rows] @ vecs.T
    sims[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :10]
    assert np.mean(cats[top] == cats[rows][:, None]) > 0.8
    # And the feature-only vector stays close to the item's own learned vector.
    own = np.sum(cold_vecs * vecs, axis=1)
    assert np.median(own) > 0.5


def test_an_item_with_no_interactions_gets_a_feature_vector(synthetic):
    pairs, items = synthetic
    cold_ids = items["item_id"].to_numpy()[::10]
    warm_pairs = pairs[~pairs["item_id"].isin(cold_ids)]
    model, item_feats, _ = tt.fit(warm_pairs, items, SMALL)
    vecs = model.item_vectors(item_feats)
    cold = np.isin(item_feats.item_ids, cold_ids)
    assert np.isfinite(vecs[cold]).all()
    assert _category_precision(vecs, np.flatnonzero(cold), item_feats.category) > 0.6


def test_save_and_load_give_the_same_vectors(tmp_path, trained):
    model, item_feats, user_feats = trained
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["config"] == SMALL.to_dict()
    loaded = tt.load(tmp_path / "m")
    assert loaded.config == model.config and loaded.vocab == model.vocab
    assert np.array_equal(loaded.item_vectors(item_feats), model.item_vectors(item_feats))
    assert np.array_equal(loaded.user_vectors(user_feats), model.user_vectors(user_feats))


# --- Learning -----------------------------------------------------------------------------------


def test_the_model_beats_popularity_on_a_held_out_split(synthetic):
    pairs, items = synthetic
    train, test = split_pairs(pairs, "stratified", 0.25, 42)
    model, item_feats, user_feats = tt.fit(train, items, SMALL)
    keep = np.isin(item_feats.item_ids, train["item_id"].unique())
    factors = Factors(user_feats.user_ids, model.user_vectors(user_feats),
                      item_feats.item_ids[keep], model.item_vectors(item_feats)[keep])
    users = np.intersect1d(test["user_id"], train["user_id"])
    truth = test[["user_id", "item_id"]]
    ours = evaluate_all(truth, ev.als_predictions(factors, train, users), 10)
    popular = evaluate_all(truth, popularity_predictions(train, users), 10)
    assert ours["ndcg@k"] > popular["ndcg@k"] + 0.02
    assert ours["precision@k"] > popular["precision@k"]


# --- The job ------------------------------------------------------------------------------------


def test_the_job_writes_model_vectors_and_index_in_one_folder(tmp_path, synthetic):
    pairs, items = synthetic
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    snapshot = items[items["item_id"] != items["item_id"].iloc[0]]  # one paired item missing
    snapshot.to_parquet(tmp_path / "items.parquet", index=False)
    users = pd.DataFrame({"user_id": np.unique(pairs["user_id"])})
    users["country"] = np.where(users["user_id"] % 2 == 0, "US", "FR")
    users.to_parquet(tmp_path / "users.parquet", index=False)
    config = tt.TwoTowerConfig(**{**SMALL.to_dict(), "epochs": 2})
    out = job.run(str(tmp_path / "pairs.parquet"), str(tmp_path / "items.parquet"),
                  str(tmp_path / "tt"), config, users_path=str(tmp_path / "users.parquet"))
    files = {p.name for p in (tmp_path / "tt").iterdir()}
    assert {"model.pt", "config.json", "users.parquet", "items.parquet",
            "items_ip.faiss", "item_ids.npy", "meta.json"} <= files
    factors = load_factors(tmp_path / "tt")
    assert len(factors.user_ids) == pairs["user_id"].nunique()
    assert set(factors.item_ids) == set(items["item_id"])
    assert out["items_ip"]["recall@10"] == 1.0 and out["n_pairs"] == len(pairs)
    model = tt.load(tmp_path / "tt")
    assert model.vocab.countries == ("FR", "US")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_ragged_histories_answer_membership_as_the_padded_matrix_does():
    rng = np.random.default_rng(3)
    n_users, n_known, width = 300, 40, 12
    counts = rng.integers(0, width + 1, n_users)
    history = rng.integers(1, 60, (n_users, width))  # ids 1..59; ids over 40 are unknown
    users = tt.UserFeatures(np.arange(n_users), history, counts,
                            np.zeros((n_users, 2), dtype="float32"), np.zeros(n_users, "int64"))
    known = np.arange(1, n_known + 1)
    ragged = tt._Ragged.of(known, users, chunk=64)  # several chunks
    padded = tt._history_index(known, users)
    for u in range(n_users):
        seg = ragged.flat[ragged.offsets[u]:ragged.offsets[u] + ragged.counts[u]]
        assert seg.tolist() == [x for x in padded[u] if x != tt.PAD]
    p_user = rng.integers(0, n_users, 5000)
    p_id = rng.integers(1, n_known + 1, 5000)
    want = (padded[p_user] == p_id[:, None]).any(axis=1)
    assert want.any() and not want.all()
    assert np.array_equal(ragged.contains(p_user, p_id, chunk=512), want)


def test_pairs_without_a_timestamp_fail_naming_the_column():
    pairs = pd.DataFrame({"user_id": [1, 1], "item_id": [2, 3],
                          "timestamp": [pd.Timestamp("2026-01-01", tz="UTC"), pd.NaT]})
    with pytest.raises(tt.TwoTowerError, match="timestamp missing in 1 row"):
        tt.UserFeatures.from_pairs(pairs, history_len=5)


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    """A published version on a fresh database (tests/test_nearline.py:make_live)."""
    from tests.test_nearline import make_live

    yield from make_live(dsn, tmp_path, monkeypatch)


def test_the_daily_fits_one_after_the_other_train_the_same_models(live, monkeypatch):
    """Above RECS_TWO_TOWER_PARALLEL_MAX_PAIRS the daily DAG's two fits run one after the
    other (less memory), with the same vectors as side by side."""
    from core import settings as settings_mod
    from jobs import daily
    from tests.test_nearline import DAY

    steps = live["steps"]
    assert steps["tt"]["side_by_side"]
    monkeypatch.setenv("RECS_TWO_TOWER_PARALLEL_MAX_PAIRS", "0")
    monkeypatch.setattr(settings_mod, "_cached", None)
    after = daily.train_two_tower(DAY + dt.timedelta(days=1), steps["pairs"], steps["ex"],
                                  steps["text"])
    assert not after["side_by_side"] and after["dir"] != steps["tt"]["dir"]
    for fit in daily.FITS:
        for name in ("users.parquet", "items.parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(Path(after["dir"]) / fit / name),
                pd.read_parquet(Path(steps["tt"]["dir"]) / fit / name))
