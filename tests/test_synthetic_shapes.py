"""Synthetic data shapes: the knobs keep the default data, stay chunk-independent and each
preset measurably has the shape it names."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import psycopg2
import pytest

from cli.main import build_parser, main
from jobs.ingest import synthetic
from jobs.ingest.synthetic import SHAPES, SyntheticConfig, shape_config

SIZES = {"n_users": 400, "n_items": 200, "n_events": 30_000, "seed": 5}


def _events(config: SyntheticConfig, chunk_size: int = synthetic.CHUNK_ROWS) -> pd.DataFrame:
    return pd.concat(list(synthetic.iter_events(config, chunk_size)), ignore_index=True)


def _frame_sha(ev: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for col in ("event_id", "user_id", "item_id", "ts"):
        h.update(ev[col].to_numpy(dtype=np.int64).tobytes())
    h.update("\n".join(ev["event_type"]).encode())
    h.update(np.nan_to_num(ev["rating"].to_numpy(dtype=np.float64), nan=-1.0).tobytes())
    return h.hexdigest()


def _per_user(config: SyntheticConfig, ev: pd.DataFrame) -> pd.Series:
    users = synthetic.generate_users(config)["user_id"]
    return ev["user_id"].value_counts().reindex(users, fill_value=0)


def _top1_share(config: SyntheticConfig, ev: pd.DataFrame) -> float:
    counts = ev["item_id"].value_counts()
    return counts.iloc[:max(1, config.n_items // 100)].sum() / len(ev)


def _successor_pair_share(config: SyntheticConfig, ev: pd.DataFrame) -> float:
    """Share of a user's consecutive events (in time) whose second item succeeds the first."""
    items = synthetic.generate_items(config)
    succ = dict(zip(items["item_id"], items["item_id"].to_numpy()[
        synthetic.successors(config, items)], strict=True))
    o = ev.sort_values(["user_id", "ts"], kind="stable")
    u, it = o["user_id"].to_numpy(), o["item_id"].to_numpy()
    same = u[1:] == u[:-1]
    follows = np.array([succ[a] == b for a, b in zip(it[:-1], it[1:], strict=True)])
    return float(follows[same].mean())


def _half_shift(config: SyntheticConfig, ev: pd.DataFrame) -> pd.Series:
    """Per user with 30+ events: total variation between the category mix of the first and
    the second half of their events in time."""
    cat = synthetic.generate_items(config).set_index("item_id")["category"]
    o = ev.sort_values(["user_id", "ts"], kind="stable").assign(
        cat=lambda f: cat.loc[f["item_id"]].to_numpy())
    g = o.groupby("user_id")
    o = o.assign(late=g.cumcount() >= g["user_id"].transform("size") // 2,
                 n=g["user_id"].transform("size"))
    o = o[o["n"] >= 30]
    mix = o.groupby(["user_id", "late"])["cat"].value_counts(normalize=True).unstack(
        fill_value=0.0)
    return 0.5 * (mix.xs(False, level="late") - mix.xs(True, level="late")).abs().sum(axis=1)


# --- defaults keep today's data ---------------------------------------------------------------

def test_default_config_keeps_data_and_digest():
    small = SyntheticConfig(n_users=200, n_items=100, n_events=5000)
    # Hashes computed on the generator before the shape knobs existed.
    assert _frame_sha(_events(small)) == (
        "300050678220462b68d2e9aec26ea0065d9a36228bb8eff92caba52aebf95c79")
    two_blocks = SyntheticConfig(n_users=300, n_items=150, n_events=60_000, seed=3)
    assert _frame_sha(_events(two_blocks, 7_000)) == (
        "3ca38fc8847fe46dd6d9e3b6b6c4b555b3fdcc043bed63d756c5972ac137ac8f")
    assert small.digest() == "a934920922b8df76fcf6b088046ee9248d9fed5ef8086cdc901ee56e0a30e2c6"
    assert SyntheticConfig().digest() == (
        "c2c1e3268899c9403bc7bbfa493b10792ed8177c5dcef08abdc16b7c78fe0082")
    assert shape_config("default").digest() == SyntheticConfig().digest()
    explicit = SyntheticConfig(activity_sigma=1, activity_cap=0, sequential_share=0,
                               drift_share=0.0)
    assert explicit.digest() == SyntheticConfig().digest()
    assert "activity_sigma" not in SyntheticConfig().params()
    # A changed knob changes the digest, whatever the number's type.
    assert (SyntheticConfig(activity_sigma=2).digest()
            == SyntheticConfig(activity_sigma=2.0).digest() != SyntheticConfig().digest())


@pytest.mark.parametrize("knobs", [
    {"activity_sigma": 2.2, "activity_cap": 40.0},
    {"sequential_share": 0.7},
    {"drift_share": 0.8},
    {"activity_sigma": 2.0, "sequential_share": 0.5, "drift_share": 0.5},
], ids=["activity", "sequential", "drift", "all"])
def test_knobs_are_deterministic_and_chunk_independent(knobs):
    config = SyntheticConfig(n_users=300, n_items=150, n_events=60_000, seed=3, **knobs)
    whole = _events(config)
    pd.testing.assert_frame_equal(whole, _events(config, 7_000))
    pd.testing.assert_frame_equal(whole, _events(dataclasses.replace(config), 60_000))
    base = _events(SyntheticConfig(n_users=300, n_items=150, n_events=60_000, seed=3))
    assert config.digest() != SyntheticConfig(n_users=300, n_items=150, n_events=60_000,
                                              seed=3).digest()
    assert not whole[["user_id", "item_id", "ts"]].equals(base[["user_id", "item_id", "ts"]])


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_keeps_the_rules(name):
    config = shape_config(name, **SIZES)
    items, users = synthetic.generate_items(config), synthetic.generate_users(config)
    ev = _events(config, 9_000)
    assert len(ev) == config.n_events and ev["event_id"].is_unique
    assert ev["ts"].between(config.start_ts, config.end_ts - 1).all()
    created = items.set_index("item_id")["created_ts"]
    assert (ev["ts"].to_numpy() > created.loc[ev["item_id"]].to_numpy()).all()
    joined = users.set_index("user_id")["created_ts"]
    assert (ev["ts"].to_numpy() >= joined.loc[ev["user_id"]].to_numpy()).all()
    is_rating = ev["event_type"] == "rating"
    assert ev.loc[is_rating, "rating"].isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    # Still something to learn: most events fall in the user's (initial) preferred categories
    # or, for drift, in them or their shifted ones.
    cat_index = {c: i for i, (c, _) in enumerate(synthetic.CATEGORIES)}
    cat = items.set_index("item_id")["category"].map(cat_index).loc[ev["item_id"]].to_numpy()
    prefs = users.set_index("user_id")["categories"].loc[ev["user_id"]].to_numpy()
    shift = synthetic.drift_schedule(config, users).set_index("user_id")["shift"].loc[
        ev["user_id"]].to_numpy()
    liked = [c in {cat_index[p] for p in ps} | {(cat_index[p] + s) % config.n_categories
                                                 for p in ps}
             for c, ps, s in zip(cat, prefs, shift, strict=True)]
    assert np.mean(liked) > 0.6


# --- each shape does what it says ---------------------------------------------------------

def test_popular_is_skewed_and_longtail_is_flat():
    shares = {name: _top1_share(shape_config(name, **SIZES), _events(shape_config(name, **SIZES)))
              for name in ("popular", "default", "longtail")}
    # Top 1% of 200 items: popular ~0.36, default ~0.17, longtail ~0.04.
    assert shares["popular"] > 1.5 * shares["default"] > 3 * shares["longtail"]


def test_coldstart_has_many_light_users():
    config = shape_config("coldstart", n_items=200, n_events=30_000, seed=5)
    assert config.n_users == 2500 and config.activity_sigma == 2.5
    light = (_per_user(config, _events(config)) < 5).mean()
    assert light > 0.4
    # Even with the default users-to-events ratio, the activity tail alone gives > 40%.
    same_size = shape_config("coldstart", **{**SIZES, "n_events": 20_000})
    assert (_per_user(same_size, _events(same_size)) < 5).mean() > 0.4
    default = SyntheticConfig(**{**SIZES, "n_events": 20_000})
    assert (_per_user(default, _events(default)) < 5).mean() < 0.1
    # The cap keeps any one user far from dominating.
    assert _per_user(same_size, _events(same_size)).max() < 0.05 * same_size.n_events


def test_activity_cap_bounds_the_most_active_user():
    config = SyntheticConfig(**SIZES, activity_sigma=3.0, activity_cap=10.0)
    activity = synthetic.generate_users(config)["activity"]
    assert activity.max() / activity.median() <= 10.0 + 1e-9
    uncapped = synthetic.generate_users(dataclasses.replace(config, activity_cap=0.0))
    assert uncapped["activity"].max() / uncapped["activity"].median() > 100


def test_sequential_follows_successor_chains():
    seq = shape_config("sequential", **SIZES)
    default = shape_config("default", **SIZES)
    followed, base = (_successor_pair_share(c, _events(c)) for c in (seq, default))
    assert base < 0.03 and followed > 0.3
    # Successors stay in the item's category and form one chain per category.
    items = synthetic.generate_items(seq)
    succ = synthetic.successors(seq, items)
    assert (items["category"].to_numpy()[succ] == items["category"].to_numpy()).all()
    assert sorted(succ.tolist()) == list(range(len(items)))


def test_drift_switches_preferred_categories():
    drift = shape_config("drift", **SIZES)
    default = shape_config("default", **SIZES)
    users = synthetic.generate_users(drift)
    schedule = synthetic.drift_schedule(drift, users).set_index("user_id")
    assert 0.6 < schedule["drifts"].mean() < 0.8
    assert schedule.loc[schedule["drifts"], "switch_ts"].between(
        drift.start_ts, drift.end_ts - 1).all()
    assert (schedule.loc[schedule["drifts"], "shift"] > 0).all()
    assert (schedule.loc[~schedule["drifts"], "shift"] == 0).all()
    ev = _events(drift)
    shifted = _half_shift(drift, ev)
    drifting = shifted[schedule.loc[shifted.index, "drifts"].to_numpy()]
    still = shifted[~schedule.loc[shifted.index, "drifts"].to_numpy()]
    base = _half_shift(default, _events(default))
    assert drifting.mean() > base.mean() + 0.2
    assert abs(still.mean() - base.mean()) < 0.1
    # After the switch a drifting user's picks go to the shifted categories.
    cat_index = {c: i for i, (c, _) in enumerate(synthetic.CATEGORIES)}
    cat = synthetic.generate_items(drift).set_index("item_id")["category"].map(cat_index)
    e = ev[schedule.loc[ev["user_id"], "drifts"].to_numpy()]
    s = schedule.loc[e["user_id"]]
    prefs = users.set_index("user_id")["categories"].loc[e["user_id"]]
    new_pref = [int(c) in {(cat_index[p] + k) % drift.n_categories for p in ps}
                for c, ps, k in zip(cat.loc[e["item_id"]], prefs, s["shift"], strict=True)]
    after = e["ts"].to_numpy() >= s["switch_ts"].to_numpy()
    new_pref = np.array(new_pref)
    assert new_pref[after].mean() > 0.6 and new_pref[~after].mean() < 0.35  # ~0.80, ~0.24


# --- validation and the command line ------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    ({"activity_sigma": 0.0}, "activity_sigma"), ({"activity_sigma": 11.0}, "activity_sigma"),
    ({"activity_cap": 0.5}, "activity_cap"), ({"activity_cap": -1.0}, "activity_cap"),
    ({"sequential_share": 1.5}, "sequential_share"), ({"sequential_share": -0.1},
                                                       "sequential_share"),
    ({"drift_share": 2.0}, "drift_share"), ({"drift_share": -0.5}, "drift_share"),
])
def test_bad_knobs_are_named(changes, field):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}="):
        SyntheticConfig(**changes)
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}="):
        shape_config("default", **changes)


def test_unknown_shape_is_named():
    with pytest.raises(ValueError, match=r"'zigzag'.*default, popular, longtail, sequential, "
                                         r"coldstart, drift"):
        shape_config("zigzag")
    assert shape_config("popular", zipf_exponent=2.0).zipf_exponent == 2.0
    assert shape_config("coldstart", n_users=10).n_users == 10


def test_load_command_parses_the_shape(capsys):
    args = build_parser().parse_args(["load", "synthetic", "--shape", "coldstart",
                                      "--events", "900"])
    assert (args.shape, args.events, args.users) == ("coldstart", 900, None)
    assert build_parser().parse_args(["load", "synthetic"]).shape == "default"
    assert main(["load", "synthetic", "--shape", "zigzag"]) == 2
    assert "unknown synthetic shape 'zigzag'" in capsys.readouterr().err


def test_load_command_loads_a_shape(settings, capsys):
    argv = ["load", "synthetic", "--shape", "coldstart", "--items", "60", "--events", "3000"]
    assert main(argv) == 0
    want = shape_config("coldstart", n_items=60, n_events=3000)
    with psycopg2.connect(settings.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM items), "
                    "(SELECT count(*) FROM interactions), (SELECT digest FROM loads)")
        assert cur.fetchone() == (2500, 60, 3000, want.digest())
    conn.close()
    assert main(argv) == 0 and "already loaded" in capsys.readouterr().out
