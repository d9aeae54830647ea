"""Ingest: MovieLens readers (three layouts), the synthetic generator and the loader.

Loader tests run against a real Postgres (the ``dsn`` fixture); fixture datasets are
written by hand so that every loaded value can be checked exactly.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from core.constants import EVENT_TYPES
from jobs.ingest import EVENT_COLUMNS, movielens, stable_ids, synthetic
from jobs.ingest.load import LoadReport, load_movielens, load_synthetic
from jobs.ingest.movielens import BadRowError
from jobs.ingest.synthetic import SyntheticConfig

# --- helpers ---------------------------------------------------------------------------------


def _write(path: Path, lines: list[str], *, crlf: bool = False, encoding: str = "utf-8") -> None:
    end = "\r\n" if crlf else "\n"
    path.write_bytes("".join(line + end for line in lines).encode(encoding))


def _rows(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # commits
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _counts(dsn: str) -> tuple[int, int, int, int]:
    return _rows(dsn, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM items), "
                      "(SELECT count(*) FROM interactions), (SELECT count(*) FROM loads)")[0]


def _items(dsn: str) -> dict[int, tuple]:
    rows = _rows(dsn, "SELECT item_id, title, category, tags, "
                      "extract(epoch FROM created_at)::bigint FROM items")
    return {r[0]: r[1:] for r in rows}


def _users(dsn: str) -> dict[int, tuple]:
    rows = _rows(dsn, "SELECT user_id, extract(epoch FROM created_at)::bigint, country "
                      "FROM users")
    return {r[0]: r[1:] for r in rows}


def _events(dsn: str) -> list[tuple]:
    return _rows(dsn, "SELECT event_id, user_id, item_id, event_type, rating, "
                      "extract(epoch FROM \"timestamp\")::bigint, tableoid::regclass::text "
                      "FROM interactions ORDER BY user_id, item_id")


JUNE = 1527811200  # 2018-06-01T00:00:00Z, before the hot window of the fixture


def _latest(root: Path, ratings_extra: tuple[str, ...] = (),
            tags_extra: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "movies.csv", [
        "movieId,title,genres",
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
        '11,"American President, The (1995)",Comedy|Drama|Romance',
        '50,"Usual Suspects, The (1995)",Crime|Mystery|Thriller',
        "99,Unrated Thing (2018),(no genres listed)",
    ], crlf=True)
    _write(root / "ratings.csv", [
        "userId,movieId,rating,timestamp",
        "1,1,4.0,1535760000",
        "1,11,3.5,1535700000",
        f"2,1,5.0,{JUNE}",
        "2,50,2.5,1537799250",
        "3,11,0.5,1537700000",
        *ratings_extra,
    ], crlf=True)
    _write(root / "tags.csv", [
        "userId,movieId,tag,timestamp",
        "2,1,Pixar,1445714994",
        "3,1, pixar ,1445714996",
        "2,1,Funny,1445714999",
        '3,11,"politics, US",1445715000',
        "2,11,comedy,1445715001",
        *tags_extra,
    ], crlf=True)
    return root


def _ml100k(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)

    def flags(*on: str) -> str:
        return "|".join("1" if g in on else "0" for g in movielens.ML100K_GENRES)

    _write(root / "u.item", [
        "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
        + flags("Animation", "Children's", "Comedy"),
        "2|Café Society (1995)|01-Jan-1995||http://us.imdb.com/x|" + flags("Drama"),
        "267|unknown||||" + flags("unknown"),
    ], encoding="latin-1")
    _write(root / "u.data", ["1\t1\t5\t874965758", "2\t2\t3\t876893171",
                             "1\t267\t4\t878542960"])
    return root


def _ml1m(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "movies.dat", ["1::Toy Story (1995)::Animation|Children's|Comedy",
                                 "73::Misérables, Les (1995)::Drama|Musical"],
           encoding="latin-1")
    _write(root / "ratings.dat", ["1::1::5::978300760", "6040::73::3::956703932",
                                  "6040::1::4::956703954"])
    _write(root / "users.dat", ["1::F::1::10::48067", "6040::M::25::6::11106"])
    return root


# --- MovieLens readers -------------------------------------------------------------------------


def test_detect_layouts(tmp_path):
    assert movielens.detect(_latest(tmp_path / "a")).layout == "latest"
    assert movielens.detect(_ml100k(tmp_path / "b")).layout == "100k"
    assert movielens.detect(_ml1m(tmp_path / "c")).layout == "1m"
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="no MovieLens layout"):
        movielens.detect(tmp_path / "d")


def test_event_ids_are_stable_and_63_bit():
    # Pinned: changing the hash would duplicate every reloaded event.
    assert movielens.event_ids([1], [1], [964982703], [4.0]).tolist() == [7642386693285602912]
    assert movielens.event_ids([1], [1], [964982703], [4]).tolist() == [7642386693285602912]
    ids = stable_ids(np.arange(100_000), np.zeros(100_000, dtype=np.int64))
    assert ids.min() >= 0 and len(np.unique(ids)) == len(ids)


@pytest.mark.parametrize("line, reason", [
    ("1,1,x,964982703", "rating 'x' is not a number"),
    ("1,1,4.0", "expected 4 fields, got 3"),
    ("a,1,4.0,964982703", "userId 'a' is not an integer"),
    ("1,1,11,964982703", "rating '11' is outside 0..10"),
    ("1,1,4.0,yesterday", "timestamp 'yesterday' is not an integer"),
    ("1,777,4.0,964982703", "movieId 777 is not in movies.csv"),
])
def test_bad_rating_row_names_file_line_and_reason(tmp_path, line, reason):
    root = _latest(tmp_path, ratings_extra=(line,))
    with pytest.raises(BadRowError) as info:
        movielens.read(root)
    err = info.value
    assert (err.path, err.line, err.reason) == (root / "ratings.csv", 7, reason)
    assert str(err) == f"ratings.csv:7: {reason}"


def test_bad_rows_in_other_files(tmp_path):
    root = _ml1m(tmp_path / "m")
    _write(root / "movies.dat", ["1::Toy Story (1995)::Animation", "x::Broken::Drama"],
           encoding="latin-1")
    with pytest.raises(BadRowError, match=r"^movies\.dat:2: movieId 'x' is not an integer$"):
        movielens.read(root)
    root = _latest(tmp_path / "t", tags_extra=("5,1,scary",))
    with pytest.raises(BadRowError, match=r"^tags\.csv:7: expected 4 fields, got 3$"):
        movielens.read(root)
    # A wrong header means a wrong file: it fails even when skipping bad rows.
    _write(root / "ratings.csv", ["user,movie,stars,when", "1,1,4.0,1535760000"], crlf=True)
    with pytest.raises(BadRowError, match=r"^ratings\.csv:1: header 'user,movie,stars,when'"):
        movielens.read(root, skip_bad=True)


# --- MovieLens loads ---------------------------------------------------------------------------


def test_load_latest_layout_exactly(dsn, tmp_path):
    report = load_movielens(_latest(tmp_path / "ml"), dsn=dsn)
    assert (report.source, report.users, report.items, report.interactions) == (
        "movielens", 3, 4, 5)
    assert (report.skipped, report.already_loaded) == (0, False)
    assert _items(dsn) == {
        1: ("Toy Story (1995)", "Adventure",
            ["adventure", "animation", "children", "comedy", "fantasy", "pixar", "funny"],
            JUNE),
        11: ("American President, The (1995)", "Comedy",
             ["comedy", "drama", "romance", "politics, us"], 1535700000),
        50: ("Usual Suspects, The (1995)", "Crime", ["crime", "mystery", "thriller"],
             1537799250),
        99: ("Unrated Thing (2018)", None, [], JUNE),  # no ratings: earliest in data
    }
    assert _users(dsn) == {1: (1535700000, None), 2: (JUNE, None), 3: (1537700000, None)}
    rows = [(u, i, t, r, ts) for _, u, i, t, r, ts, _ in _events(dsn)]
    assert rows == [(1, 1, "rating", 4.0, 1535760000), (1, 11, "rating", 3.5, 1535700000),
                    (2, 1, "rating", 5.0, JUNE), (2, 50, "rating", 2.5, 1537799250),
                    (3, 11, "rating", 0.5, 1537700000)]
    ids = {(u, i): e for e, u, i, *_ in _events(dsn)}
    assert ids[(1, 1)] == movielens.event_ids([1], [1], [1535760000], [4.0])[0]
    assert len(set(ids.values())) == 5
    # Old history goes to a monthly partition, the hot window to daily ones.
    parts = {(u, i): p for _, u, i, *_, p in _events(dsn)}
    assert parts[(2, 1)] == "interactions_m201806"
    assert parts[(3, 11)] == "interactions_p20180923"
    assert _rows(dsn, "SELECT source, digest, users, items, interactions FROM loads") == [
        ("movielens", report.digest, 3, 4, 5)]


def test_load_100k_layout(dsn, tmp_path):
    report = load_movielens(_ml100k(tmp_path / "ml-100k"), dsn=dsn)
    assert (report.users, report.items, report.interactions) == (2, 3, 3)
    assert _items(dsn) == {
        1: ("Toy Story (1995)", "Animation", ["animation", "children's", "comedy"], 874965758),
        2: ("Café Society (1995)", "Drama", ["drama"], 876893171),
        267: ("unknown", None, [], 878542960),
    }
    assert _users(dsn) == {1: (874965758, None), 2: (876893171, None)}
    assert [(u, i, r, ts) for _, u, i, _, r, ts, _ in _events(dsn)] == [
        (1, 1, 5.0, 874965758), (1, 267, 4.0, 878542960), (2, 2, 3.0, 876893171)]


def test_load_1m_layout(dsn, tmp_path):
    report = load_movielens(_ml1m(tmp_path / "ml-1m"), dsn=dsn)
    assert (report.users, report.items, report.interactions) == (2, 2, 3)
    assert _items(dsn) == {
        1: ("Toy Story (1995)", "Animation", ["animation", "children's", "comedy"], 956703954),
        73: ("Misérables, Les (1995)", "Drama", ["drama", "musical"], 956703932),
    }
    assert _users(dsn) == {1: (978300760, None), 6040: (956703932, None)}
    assert [(u, i, r, ts) for _, u, i, _, r, ts, _ in _events(dsn)] == [
        (1, 1, 5.0, 978300760), (6040, 1, 4.0, 956703954), (6040, 73, 3.0, 956703932)]


def test_bad_row_writes_nothing(dsn, tmp_path):
    root = _latest(tmp_path / "ml", ratings_extra=("4,1,4.0,1537000000",) * 3
                   + ("4,1,x,1537000000",))
    with pytest.raises(BadRowError) as info:
        load_movielens(root, dsn=dsn)
    assert str(info.value) == "ratings.csv:10: rating 'x' is not a number"
    assert _counts(dsn) == (0, 0, 0, 0)


def test_skip_bad_counts_and_loads_the_rest(dsn, tmp_path):
    root = _latest(tmp_path / "ml", ratings_extra=("4,1,x,1537000000", "4,50,4.0,1537000000"),
                   tags_extra=("5,1,scary",))
    report = load_movielens(root, dsn=dsn, skip_bad=True)
    assert report.skipped == 2
    assert report.skipped_by_file == {"ratings.csv": 1, "tags.csv": 1}
    assert set(report.skipped_reasons) == {"ratings.csv:7: rating 'x' is not a number",
                                           "tags.csv:7: expected 4 fields, got 3"}
    assert (report.users, report.items, report.interactions) == (4, 4, 6)
    assert _counts(dsn) == (4, 4, 6, 1)
    assert _rows(dsn, "SELECT skipped FROM loads") == [(2,)]


def test_reload_is_idempotent(dsn, tmp_path):
    root = _latest(tmp_path / "ml")
    first = load_movielens(root, dsn=dsn)
    before = _counts(dsn)
    again = load_movielens(root, dsn=dsn)
    assert again.already_loaded and again.digest == first.digest
    assert (again.users, again.items, again.interactions) == (0, 0, 0)
    assert _counts(dsn) == before == (3, 4, 5, 1)
    # Without the load record, stable ids and ON CONFLICT still prevent duplicates; only
    # a changed title is written.
    _rows(dsn, "DELETE FROM loads RETURNING 1")
    stamps = dict(_rows(dsn, "SELECT item_id, updated_at FROM items"))
    movies = (root / "movies.csv").read_bytes().replace(b"Toy Story (1995)", b"Toy Story!")
    (root / "movies.csv").write_bytes(movies)
    third = load_movielens(root, dsn=dsn)
    assert not third.already_loaded and third.digest != first.digest
    assert (third.users, third.items, third.interactions) == (0, 1, 0)
    assert _counts(dsn) == (3, 4, 5, 1)
    after = dict(_rows(dsn, "SELECT item_id, updated_at FROM items"))
    assert [i for i in after if after[i] != stamps[i]] == [1]
    assert _items(dsn)[1][0] == "Toy Story!"


def test_load_real_ml_latest_small(dsn, ml_small, caplog):
    caplog.set_level(logging.INFO, logger="recs.ingest")
    report = load_movielens(ml_small, dsn=dsn)
    print(f"ml-latest-small loaded in {report.seconds:.1f} s")
    assert (report.users, report.items, report.interactions, report.skipped) == (
        610, 9742, 100836, 0)
    assert _counts(dsn) == (610, 9742, 100836, 1)
    assert _rows(dsn, "SELECT title, category FROM items WHERE item_id = 11") == [
        ("American President, The (1995)", "Comedy")]
    assert _rows(dsn, "SELECT event_id, rating, extract(epoch FROM \"timestamp\")::bigint "
                      "FROM interactions WHERE user_id = 1 AND item_id = 1") == [
        (7642386693285602912, 4.0, 964982703)]
    assert any("events read" in r.getMessage() for r in caplog.records)
    assert load_movielens(ml_small, dsn=dsn).already_loaded


# --- Synthetic ------------------------------------------------------------------------------

SMALL = SyntheticConfig(n_users=300, n_items=150, n_events=20_000, n_days=14, seed=7)


def _all_events(config: SyntheticConfig, chunk_size: int = synthetic.CHUNK_ROWS) -> pd.DataFrame:
    return pd.concat(list(synthetic.iter_events(config, chunk_size)), ignore_index=True)


@pytest.mark.parametrize("changes, field", [
    ({"n_users": 0}, "n_users"), ({"n_items": -1}, "n_items"), ({"n_days": 0}, "n_days"),
    ({"n_categories": 99}, "n_categories"), ({"seed": 1.5}, "seed"),
    ({"preferred_share": 1.5}, "preferred_share"), ({"zipf_exponent": 0}, "zipf_exponent"),
    ({"end_date": datetime(2026, 11, 1)}, "end_date"), ({"new_item_days": 0}, "new_item_days"),
    ({"event_weights": (1.0, 0.0, 0.0)}, "event_weights"),
])
def test_synthetic_config_is_validated(changes, field):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}="):
        SyntheticConfig(**changes)


def test_synthetic_is_deterministic():
    a_items, b_items = synthetic.generate_items(SMALL), synthetic.generate_items(SMALL)
    pd.testing.assert_frame_equal(a_items, b_items)
    pd.testing.assert_frame_equal(synthetic.generate_users(SMALL),
                                  synthetic.generate_users(SMALL))
    a, b = _all_events(SMALL), _all_events(SMALL)
    pd.testing.assert_frame_equal(a, b)
    assert dataclasses.replace(SMALL).digest() == SMALL.digest()
    other = dataclasses.replace(SMALL, seed=8)
    assert other.digest() != SMALL.digest()
    assert synthetic.generate_items(other)["title"].tolist() != a_items["title"].tolist()
    c = _all_events(other)
    assert not set(c["event_id"]) & set(a["event_id"])
    assert not np.array_equal(c["item_id"].to_numpy(), a["item_id"].to_numpy())


def test_synthetic_streams_in_chunks():
    config = SyntheticConfig(n_users=300, n_items=150, n_events=120_000, seed=3)
    chunks = list(synthetic.iter_events(config))
    assert [len(c) for c in chunks] == [50_000, 50_000, 20_000]
    small = list(synthetic.iter_events(config, chunk_size=7_000))
    assert {len(c) for c in small[:-1]} == {7_000} and len(small[-1]) == 120_000 % 7_000
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True),
                                  pd.concat(small, ignore_index=True))
    # A huge dataset yields its first chunk without generating the rest.
    huge = synthetic.iter_events(SyntheticConfig(n_events=50_000_000))
    assert inspect.isgenerator(huge)
    first = next(huge)
    assert list(first.columns) == list(EVENT_COLUMNS) and len(first) == 50_000
    huge.close()


def test_synthetic_rules():
    items, users = synthetic.generate_items(SMALL), synthetic.generate_users(SMALL)
    ev = _all_events(SMALL, chunk_size=6_000)
    assert len(ev) == SMALL.n_events and ev["event_id"].is_unique and (ev["event_id"] >= 0).all()
    assert set(ev["event_type"]) == set(EVENT_TYPES)
    is_rating = ev["event_type"] == "rating"
    assert ev.loc[is_rating, "rating"].isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    assert ev.loc[~is_rating, "rating"].isna().all()
    assert ev["ts"].between(SMALL.start_ts, SMALL.end_ts - 1).all()
    assert SMALL.start_ts == int(datetime(2026, 10, 18, tzinfo=UTC).timestamp())
    assert (SMALL.first_day, SMALL.last_day) == (date(2026, 10, 18), date(2026, 10, 31))
    created = items.set_index("item_id")["created_ts"]
    assert (ev["ts"].to_numpy() > created.loc[ev["item_id"]].to_numpy()).all()
    joined = users.set_index("user_id")["created_ts"]
    assert (ev["ts"].to_numpy() >= joined.loc[ev["user_id"]].to_numpy()).all()
    # Catalog: readable unique titles, 2-4 tags from the category's vocabulary, new items.
    vocab = dict(synthetic.CATEGORIES)
    assert items["title"].is_unique and items["title"].str.match(r"^[A-Z][A-Za-z ]+").all()
    assert all(2 <= len(t) <= 4 and set(t) <= set(vocab[c])
               for c, t in zip(items["category"], items["tags"], strict=True))
    new_from = SMALL.end_ts - SMALL.new_item_days * 86_400
    assert 0 < (items["created_ts"] >= new_from).sum() < len(items) // 4
    assert set(users["country"]) <= {c for c, _ in synthetic.COUNTRIES}
    assert users["categories"].map(len).between(1, 4).all()
    one_day = SyntheticConfig(n_users=50, n_items=40, n_events=2_000, n_days=1)
    ev = _all_events(one_day)
    assert ev["ts"].between(one_day.start_ts, one_day.end_ts - 1).all()


def test_synthetic_events_follow_tastes_and_popularity():
    items, users = synthetic.generate_items(SMALL), synthetic.generate_users(SMALL)
    ev = _all_events(SMALL)
    cat = items.set_index("item_id")["category"].loc[ev["item_id"]].to_numpy()
    prefs = users.set_index("user_id")["categories"].loc[ev["user_id"]].to_numpy()
    in_pref = np.mean([c in p for c, p in zip(cat, prefs, strict=True)])
    assert in_pref > 0.8
    top = items.nlargest(len(items) // 10, "popularity")["item_id"]
    assert ev["item_id"].isin(top).mean() > 0.4
    rated = ev[ev["event_type"] == "rating"]
    liked = np.array([c in p for c, p in zip(
        items.set_index("item_id")["category"].loc[rated["item_id"]],
        users.set_index("user_id")["categories"].loc[rated["user_id"]], strict=True)])
    assert rated["rating"][liked].mean() > rated["rating"][~liked].mean() + 1.0


def test_load_synthetic(settings):
    config = SyntheticConfig(n_users=200, n_items=80, n_events=5_000, n_days=10, seed=11)
    report = load_synthetic(config)  # dsn from settings
    assert isinstance(report, LoadReport)
    assert (report.source, report.digest) == ("synthetic", config.digest())
    assert (report.users, report.items, report.interactions) == (200, 80, 5_000)
    dsn = settings.dsn
    assert _counts(dsn) == (200, 80, 5_000, 1)
    items = synthetic.generate_items(config).set_index("item_id")
    stored = _items(dsn)
    assert {i: s[:3] for i, s in stored.items()} == {
        i: (r.title, r.category, list(r.tags)) for i, r in items.iterrows()}
    ev = _all_events(config)
    got = _rows(dsn, "SELECT event_id, user_id, item_id, event_type, rating, "
                     "extract(epoch FROM \"timestamp\")::bigint FROM interactions")
    want = [(e, u, i, t, None if np.isnan(r) else r, ts)
            for e, u, i, t, r, ts in ev.itertuples(index=False)]
    assert sorted(got) == sorted(want)
    assert {c for (c,) in _rows(dsn, "SELECT country FROM users")} <= {
        c for c, _ in synthetic.COUNTRIES}
    parts = {p for (p,) in _rows(dsn, "SELECT DISTINCT tableoid::regclass::text "
                                      "FROM interactions")}
    assert "interactions_p20261031" in parts
    again = load_synthetic(config)
    assert again.already_loaded and _counts(dsn) == (200, 80, 5_000, 1)
