"""Business rules from a CSV file and the rerank_rules table (jobs/rules.py), applied by the
re-ranker (models/rerank.py)."""

from __future__ import annotations

import numpy as np
import psycopg2
import pytest

from core import db
from jobs import rules as rl
from models.rerank import RerankConfig, Rules, rerank

GOOD = """kind,value,slot
# a comment, then a blank line

block_item,4711,
block_category,Horror,
block_tag,Gore,
pin,1042,1
pin, 7 ,3
block_item,12
"""


def write(tmp_path, text: str, name: str = "rules.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_file_parses_every_kind(tmp_path):
    rows = rl.read_file(write(tmp_path, GOOD))
    assert rows == [("block_item", "4711", None), ("block_category", "Horror", None),
                    ("block_tag", "Gore", None), ("pin", "1042", 1), ("pin", "7", 3),
                    ("block_item", "12", None)]


def test_read_file_accepts_a_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffkind,value,slot\r\npin,5,2\r\n".encode())
    assert rl.read_file(path) == [("pin", "5", 2)]


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("kind,value,slot\nboost,5,\n", 2, "unknown kind 'boost'"),
    ("kind,value,slot\nblock_item,,\n", 2, "missing its value"),
    ("kind,value,slot\n\n# note\nblock_category,  ,\n", 4, "missing its value"),
    ("kind,value,slot\npin,5,first\n", 2, "bad slot 'first'"),
    ("kind,value,slot\npin,5,0\n", 2, "bad slot '0'"),
    ("kind,value,slot\npin,5,-2\n", 2, "bad slot '-2'"),
    ("kind,value,slot\nblock_item,1,\npin,5,\n", 3, "pin of item 5 has no slot"),
    ("kind,value,slot\npin,5\n", 2, "pin of item 5 has no slot"),
    ("kind,value,slot\nblock_item,5,2\n", 2, "only pin rules take a slot"),
    ("kind,value,slot\npin,abc,1\n", 2, "must be an item id"),
    ("kind,value,slot\nblock_item,1,,extra\n", 2, "expected 3 fields"),
    ("kind,value,slot\nblock_tag,gore,\nblock_tag,GORE,\n", 3, "duplicate block_tag"),
    ("item,value,slot\nblock_item,1,\n", 1, "wrong header"),
    ("# only a comment\nblock_item,1,\n", 2, "wrong header"),
    ("", 1, "wrong header"),
])
def test_read_file_bad_line_names_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(rl.RulesError) as err:
        rl.read_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert reason in msg
    assert isinstance(err.value, ValueError)


def insert(conn, rows):
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO rerank_rules (kind, value, slot, note) "
                        "VALUES (%s, %s, %s, %s)", rows)
    conn.commit()


def test_table_round_trip(dsn):
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM schema_migrations WHERE version = 6")
            assert cur.fetchone() == ("006_rerank_rules.sql",)
        assert rl.read_table(conn) == []
        insert(conn, [("pin", "9", 2, "launch"), ("block_item", "4711", None, None),
                      ("block_tag", "gore", None, "policy"),
                      ("block_category", "Horror", None, None)])
        assert rl.read_table(conn) == [("pin", "9", 2), ("block_item", "4711", None),
                                       ("block_tag", "gore", None),
                                       ("block_category", "Horror", None)]
        rules = rl.load(conn, item_tags={1: ["Gore"], 2: ["family"]})
        assert rules.pins == {9: 2} and rules.blocked_items == {4711}
        assert rules.blocked_categories == {"Horror"}
        assert not rules.policy(1) and rules.policy(2) and rules.policy(3)
    finally:
        conn.close()
    # SQLAlchemy connections and engines read the same rows.
    eng = db.engine(dsn)
    with eng.connect() as c:
        assert rl.read_table(c)[0] == ("pin", "9", 2)
    assert len(rl.read_table(eng)) == 4


@pytest.mark.parametrize("row", [
    ("boost", "1", None),  # unknown kind
    ("pin", "1", 0),  # slot < 1
    ("pin", "1", None),  # pin without slot
    ("block_item", "1", 3),  # slot on a block
    ("block_item", "one", None),  # not an item id
    ("block_tag", " ", None),  # empty value
])
def test_table_refuses_rows_the_reranker_cannot_use(dsn, row):
    conn = db.connect(dsn)
    try:
        with pytest.raises(psycopg2.IntegrityError):
            insert(conn, [(*row, None)])
    finally:
        conn.close()


def test_table_keeps_one_row_per_kind_and_value(dsn):
    conn = db.connect(dsn)
    try:
        insert(conn, [("pin", "5", 1, None)])
        with pytest.raises(psycopg2.errors.UniqueViolation):
            insert(conn, [("pin", "5", 4, None)])
    finally:
        conn.close()


def test_load_merges_table_and_file(dsn, tmp_path):
    path = write(tmp_path, "kind,value,slot\nblock_item,2,\nblock_category,Drama,\n"
                           "pin,9,2\nblock_tag,SPOILER,\n")
    conn = db.connect(dsn)
    try:
        insert(conn, [("block_item", "1", None, None), ("pin", "9", 2, None),
                      ("pin", "8", 5, None), ("block_tag", "gore", None, None)])
        rules = rl.load(conn, path, item_tags={10: ["Gore"], 11: ["spoiler"],
                                               12: ["fine"]})
        assert rules.blocked_items == {1, 2}
        assert rules.blocked_categories == {"Drama"}
        assert rules.pins == {9: 2, 8: 5}
        assert [rules.policy(i) for i in (10, 11, 12, 13)] == [False, False, True, True]
        # The same item pinned to two slots is a conflict, not a silent choice.
        other = write(tmp_path, "kind,value,slot\npin,9,3\n", "other.csv")
        with pytest.raises(rl.RulesError, match="pinned to slot 2 and to slot 3"):
            rl.load(conn, other)
    finally:
        conn.close()


def test_load_without_sources_is_no_rules(tmp_path):
    assert rl.load() == Rules()
    assert rl.load(path="") == Rules()
    rules = rl.load(path=write(tmp_path, "kind,value,slot\n"))
    assert rules.policy is None and not rules.pins


def test_block_tag_needs_item_tags(tmp_path):
    path = write(tmp_path, "kind,value,slot\nblock_tag,gore,\n")
    with pytest.raises(rl.RulesError, match="need the items' tags"):
        rl.load(path=path)


def test_policy_blocks_tagged_items_case_insensitively():
    policy = rl.tag_policy(["Gore", " nsfw "], {
        1: ["gore", "action"], 2: ("NSFW",), 3: ["family"], 4: [], 5: None,
        6: np.array(["GoRe"]), 7: "nsfw", 8: float("nan")})
    assert [policy(i) for i in range(1, 10)] == [False, False, True, True, True, False,
                                                 False, True, True]
    assert policy(np.int64(1)) is False


def test_rules_applied_by_rerank_end_to_end(tmp_path):
    """Over many random score orders: blocked items, categories and tags never appear;
    the pinned item always lands in its slot."""
    n = 40
    items = np.arange(100, 100 + n)
    cats = [("Action", "Comedy", "Horror", "Drama")[i % 4] for i in range(n)]
    tags = {int(i): (["gore"] if i % 7 == 0 else ["ok"]) for i in items}
    path = write(tmp_path, "kind,value,slot\nblock_item,101,\nblock_item,105,\n"
                           "block_category,Horror,\nblock_tag,GORE,\npin,139,3\n")
    rules = rl.load(path=path, item_tags=tags)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.normal(size=n)
        pos = rerank(items, scores, cats, 10, config=RerankConfig(diversity=0.0),
                     rules=rules)
        got = [int(items[p]) for p in pos]
        assert len(got) == 10 and len(set(got)) == 10
        assert not {101, 105} & set(got)
        assert all(cats[p] != "Horror" for p in pos)
        assert all("gore" not in tags[i] for i in got)
        assert got[2] == 139
