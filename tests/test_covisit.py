"""Spark co-visitation against hand-computed values and a pure-Python reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.settings import PROJECT_ROOT
from jobs import covisit
from jobs.train_als import spark_session

pytestmark = pytest.mark.spark

COLUMNS = list(covisit.COLUMNS)
T0 = pd.Timestamp("2026-03-01", tz="UTC")


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]", app="recs-test-covisit")
    yield session
    session.stop()


def _pairs(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, seconds after T0) rows as a pairs frame."""
    user, item, sec = zip(*rows, strict=True)
    return pd.DataFrame({"user_id": np.array(user, dtype="int64"),
                         "item_id": np.array(item, dtype="int64"),
                         "weight": np.ones(len(rows), dtype="float32"),
                         "timestamp": T0 + pd.to_timedelta(sec, unit="s")})


# User 1 visits 10, 20, 30; user 2 visits 20, 10, 30; user 3 visits 10 and 30 at the same
# second (10 first by item id); user 4 visits 40 only. Users 5 and 6 visit 50, 60, 70 all
# at one second, listed out of order, so only the item-id tie-break orders them.
TINY = _pairs([(1, 30, 3), (1, 10, 1), (1, 20, 2),
               (2, 20, 1), (2, 10, 2), (2, 30, 3),
               (3, 30, 5), (3, 10, 5),
               (4, 40, 1),
               (5, 70, 9), (5, 50, 9), (5, 60, 9),
               (6, 60, 4), (6, 70, 4), (6, 50, 4)])
# Users per item: 10 -> 3, 20 -> 2, 30 -> 3, 40 -> 1, 50/60/70 -> 2.


def _expected(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    item, nb, score, cnt = zip(*rows, strict=True)
    return pd.DataFrame({"item_id": np.array(item, dtype="int64"),
                         "neighbour_id": np.array(nb, dtype="int64"),
                         "score": np.array(score, dtype="float32"),
                         "count": np.array(cnt, dtype="int64")})


def test_tiny_window_1_by_hand(spark):
    # Adjacent only: {10,20} in users 1, 2; {20,30} in user 1; {10,30} in users 2, 3;
    # {50,60} and {60,70} in users 5, 6; {50,70} never (two places apart).
    got = covisit.count(spark, TINY, window=1, min_count=1)
    want = _expected([
        (10, 20, 2 / math.sqrt(3 * 2), 2), (10, 30, 2 / math.sqrt(3 * 3), 2),
        (20, 10, 2 / math.sqrt(3 * 2), 2), (20, 30, 1 / math.sqrt(2 * 3), 1),
        (30, 10, 2 / math.sqrt(3 * 3), 2), (30, 20, 1 / math.sqrt(2 * 3), 1),
        (50, 60, 1.0, 2), (60, 50, 1.0, 2), (60, 70, 1.0, 2), (70, 60, 1.0, 2)])
    pd.testing.assert_frame_equal(got, want)
    # min_count=2 drops {20,30}, seen in user 1 only.
    got = covisit.count(spark, TINY, window=1, min_count=2)
    pd.testing.assert_frame_equal(
        got, want[want["count"] >= 2].reset_index(drop=True))


def test_tiny_window_2_by_hand_with_a_score_tie(spark):
    # Two apart now counts: {10,30} in users 1, 2, 3 (score 3/3); {20,30} in users 1, 2;
    # {50,70} in users 5, 6. Item 20's two neighbours tie at 2/sqrt(6): 10 before 30.
    got = covisit.count(spark, TINY, window=2)
    s = 2 / math.sqrt(6)
    want = _expected([
        (10, 30, 1.0, 3), (10, 20, s, 2),
        (20, 10, s, 2), (20, 30, s, 2),
        (30, 10, 1.0, 3), (30, 20, s, 2),
        (50, 60, 1.0, 2), (50, 70, 1.0, 2),
        (60, 50, 1.0, 2), (60, 70, 1.0, 2),
        (70, 50, 1.0, 2), (70, 60, 1.0, 2)])
    pd.testing.assert_frame_equal(got, want)
    top1 = covisit.count(spark, TINY, window=2, top=1)
    assert list(zip(top1["item_id"], top1["neighbour_id"], strict=True)) == [
        (10, 30), (20, 10), (30, 10), (50, 60), (60, 50), (70, 50)]


def reference(pairs: pd.DataFrame, window: int, top: int, min_count: int) -> pd.DataFrame:
    """The definition, written plainly: loops over each user's ordered items."""
    co: Counter = Counter()
    users: Counter = Counter()
    for _, g in pairs.groupby("user_id"):
        seq = g.sort_values(["timestamp", "item_id"], kind="stable")["item_id"].tolist()
        users.update(set(seq))
        seen = set()
        for i, a in enumerate(seq):
            for b in seq[i + 1:i + 1 + window]:
                if a != b:
                    seen.add((min(a, b), max(a, b)))
        co.update(seen)
    rows = []
    for (a, b), c in co.items():
        if c >= min_count:
            s = c / math.sqrt(users[a] * users[b])
            rows += [(a, b, s, c), (b, a, s, c)]
    if not rows:
        return covisit._empty()
    out = pd.DataFrame(rows, columns=COLUMNS)
    out = out.sort_values(["item_id", "score", "neighbour_id"], ascending=[True, False, True])
    out = out.groupby("item_id", sort=False).head(top).reset_index(drop=True)
    return out.astype({"item_id": "int64", "neighbour_id": "int64", "score": "float32",
                       "count": "int64"})


def _random_pairs(repeats: bool) -> pd.DataFrame:
    """~300 users, ~200 items (ids far above 2**32), popularity skewed.

    With ``repeats`` some (user, item) rows occur twice and timestamps are coarse, so
    ties and repeated items are exercised.
    """
    rng = np.random.default_rng(0)
    popularity = rng.pareto(1.5, 200) + 0.1
    popularity /= popularity.sum()
    frames = []
    for user in range(300):
        n = int(rng.integers(1, 60))
        items = rng.choice(200, size=n, replace=repeats, p=popularity)
        seconds = rng.integers(0, 50 if repeats else 10**6, size=n)
        frames.append(pd.DataFrame({"user_id": 7 * user + 3, "item_id": items + 10**12,
                                    "sec": seconds}))
    f = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"user_id": f["user_id"].astype("int64"),
                         "item_id": f["item_id"].astype("int64"),
                         "weight": rng.random(len(f)).astype("float32"),
                         "timestamp": T0 + pd.to_timedelta(f["sec"], unit="s")})


@pytest.fixture(scope="module")
def random_pairs() -> pd.DataFrame:
    return _random_pairs(repeats=False)


@pytest.mark.parametrize("repeats, window, top, min_count", [
    (False, 20, 100, 2), (True, 20, 100, 2), (True, 3, 5, 1), (False, 8, 4, 3)])
def test_spark_matches_the_python_reference(spark, repeats, window, top, min_count):
    pairs = _random_pairs(repeats)
    if repeats:
        assert pairs.duplicated(["user_id", "item_id"]).any()
    got = covisit.count(spark, pairs, window=window, top=top, min_count=min_count)
    want = reference(pairs, window, top, min_count)
    assert len(got) > 100
    assert list(got.columns) == COLUMNS
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    pd.testing.assert_frame_equal(got[["item_id", "neighbour_id", "count"]],
                                  want[["item_id", "neighbour_id", "count"]])
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-6)
    assert got.groupby("item_id").size().max() <= top


@pytest.mark.parametrize("unit", ["us", "ns"])
def test_pairs_read_by_spark_give_the_pandas_frames_table(spark, tmp_path, unit):
    """run_many reads the pairs with spark.read.parquet (microsecond timestamps as the
    pipeline writes them, or nanoseconds read as longs): the same table as from pandas."""
    pairs = _random_pairs(repeats=True)
    path = tmp_path / "pairs.parquet"
    # pandas writes nanoseconds by default; the pipeline coerces to microseconds.
    pairs.to_parquet(path, index=False, coerce_timestamps=None if unit == "ns" else unit)
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        got = covisit.count(spark, spark.read.parquet(str(path)), window=4, min_count=1)
    finally:
        spark.conf.unset("spark.sql.legacy.parquet.nanosAsLong")
    want = covisit.count(spark, pairs, window=4, min_count=1)
    assert len(got) > 100
    pd.testing.assert_frame_equal(got, want)


def test_window_and_min_count_are_respected(spark, random_pairs):
    # Window 1: every emitted pair is adjacent in some user's order.
    adjacent = set()
    for _, g in random_pairs.groupby("user_id"):
        seq = g.sort_values(["timestamp", "item_id"])["item_id"].tolist()
        adjacent.update(zip(seq, seq[1:], strict=False))
        adjacent.update(zip(seq[1:], seq, strict=False))
    w1 = covisit.count(spark, random_pairs, window=1, min_count=1, top=1000)
    assert set(zip(w1["item_id"], w1["neighbour_id"], strict=True)) <= adjacent
    # A wider window only adds co-visits: counts never drop, new pairs appear.
    w5 = covisit.count(spark, random_pairs, window=5, min_count=1, top=1000)
    both = w1.merge(w5, on=["item_id", "neighbour_id"], suffixes=("_1", "_5"))
    assert len(both) == len(w1) < len(w5)
    assert (both["count_5"] >= both["count_1"]).all()
    # min_count keeps exactly the pairs with at least that many users.
    w5_m3 = covisit.count(spark, random_pairs, window=5, min_count=3, top=1000)
    kept = w5[w5["count"] >= 3].reset_index(drop=True)
    assert (w5["count"] < 3).any()
    pd.testing.assert_frame_equal(w5_m3, kept)


def test_empty_and_pairless_inputs_give_empty_frames(spark):
    empty = covisit.count(spark, TINY.iloc[:0])
    assert list(empty.columns) == COLUMNS and empty.empty
    dtypes = {"item_id": "int64", "neighbour_id": "int64", "score": "float32",
              "count": "int64"}
    assert empty.dtypes.astype(str).to_dict() == dtypes
    # Pairs, but no pair of items is co-visited by 4 users.
    lonely = covisit.count(spark, TINY, window=1, min_count=4)
    assert lonely.empty and list(lonely.columns) == COLUMNS
    assert lonely.dtypes.astype(str).to_dict() == dtypes


def test_bad_parameters_name_the_argument(spark):
    for kwargs, name in (({"window": 0}, "window"), ({"top": 0}, "top"),
                         ({"min_count": -1}, "min_count")):
        with pytest.raises(ValueError, match=name):
            covisit.count(spark, TINY, **kwargs)
    with pytest.raises(ValueError, match="timestamp"):
        covisit.count(spark, TINY.assign(timestamp=pd.NaT))


@pytest.mark.parametrize("flag", ["--window", "--top", "--min-count"])
def test_cli_rejects_values_below_one(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        covisit.main(["--pairs", str(tmp_path / "p.parquet"), "--out", str(tmp_path), flag, "0"])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(PROJECT_ROOT) / "jobs" / "covisit.py"),
                           *args], capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT)


def test_cli_writes_table_and_meta(tmp_path):
    src = tmp_path / "pairs.parquet"
    TINY.to_parquet(src, index=False)
    out = tmp_path / "covisit"
    r = _cli("--pairs", str(src), "--out", str(out), "--window", "2", "--top", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_parquet(out / "covisit.parquet")
    assert list(zip(table["item_id"], table["neighbour_id"], strict=True)) == [
        (10, 30), (20, 10), (30, 10), (50, 60), (60, 50), (70, 50)]
    assert table.dtypes.astype(str).to_dict() == {
        "item_id": "int64", "neighbour_id": "int64", "score": "float32", "count": "int64"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"] == {"window": 2, "top": 1, "min_count": 2}
    assert meta["n_pairs"] == len(TINY) and meta["n_items"] == 6
    assert meta["seconds"] >= 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_missing_input_exits_2_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "pairs.parquet"
    r = _cli("--pairs", str(missing), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
