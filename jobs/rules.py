"""Business rules for the re-ranker, from a CSV file and the ``rerank_rules`` table.

A rule is a row ``(kind, value, slot)``:

* ``block_item``      value = item id; the item is never shown;
* ``block_category``  value = category name (matched exactly); no item of it is shown;
* ``block_tag``       value = tag (matched case-insensitively); no item carrying the tag is
                      shown: the content policy (``Rules.policy``);
* ``pin``             value = item id, slot = 1-based position; the item is placed at that
                      slot of every list it can enter (see models/rerank.py).

The file (``RECS_RULES_FILE``) is UTF-8 CSV whose first line is the header
``kind,value,slot``; ``slot`` is empty for every kind but ``pin`` and required for
``pin``. Blank lines and lines starting with ``#`` are skipped::

    kind,value,slot
    # legal asked us to drop this one (ticket 123)
    block_item,4711,
    block_category,Horror,
    block_tag,gore,
    pin,1042,1

A bad line stops the load with :class:`RulesError` ``"<path>:<line>: <reason>"``; a bad
table row (the table's checks keep them out) with ``"rerank_rules:<rule_id>: <reason>"``.
Reading is I/O; turning rows into :class:`models.rerank.Rules` (:func:`build`) is not.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from models.rerank import Rules, rules_from_rows

KINDS = ("block_item", "block_category", "block_tag", "pin")
HEADER = ("kind", "value", "slot")
ITEM_KINDS = ("block_item", "pin")  # value is an item id

Row = tuple[str, str, int | None]


class RulesError(ValueError):
    """A rule file or table row is malformed; the message names where."""


def _check(kind: str, value: str, slot: object) -> Row:
    """One validated rule, or ValueError with the reason (no location)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not value:
        raise ValueError(f"{kind} rule is missing its value")
    if kind in ITEM_KINDS:
        try:
            int(value)
        except ValueError:
            raise ValueError(f"{kind} value must be an item id, got {value!r}") from None
    if slot is None or (isinstance(slot, str) and not slot.strip()):
        if kind == "pin":
            raise ValueError(f"pin of item {value} has no slot (a 1-based position)")
        return kind, value, None
    try:
        n = int(str(slot).strip())
    except ValueError:
        raise ValueError(f"bad slot {slot!r}: expected an integer >= 1") from None
    if n < 1:
        raise ValueError(f"bad slot {slot!r}: expected an integer >= 1")
    if kind != "pin":
        raise ValueError(f"slot {n} given for a {kind} rule: only pin rules take a slot")
    return kind, value, n


def parse_lines(lines: Iterable[str], source: str) -> list[Row]:
    """Rules from the lines of a rule file; ``source`` names it in error messages."""
    rows: list[Row] = []
    seen: dict[tuple[str, str], int] = {}
    header_seen = False
    for lineno, fields in _numbered(lines):
        if not header_seen:
            got = tuple(f.strip().lower() for f in fields)
            if got != HEADER:
                raise RulesError(f"{source}:{lineno}: wrong header {','.join(fields)!r}: "
                                 f"expected {','.join(HEADER)!r}")
            header_seen = True
            continue
        if len(fields) not in (2, 3):
            raise RulesError(f"{source}:{lineno}: expected 3 fields (kind,value,slot), "
                             f"got {len(fields)}")
        kind, value = fields[0].strip(), fields[1].strip()
        slot = fields[2] if len(fields) == 3 else None
        try:
            row = _check(kind, value, slot)
        except ValueError as exc:
            raise RulesError(f"{source}:{lineno}: {exc}") from None
        key = (row[0], row[1].casefold() if kind == "block_tag" else row[1])
        if key in seen:
            raise RulesError(f"{source}:{lineno}: duplicate {kind} rule for {value!r} "
                             f"(first on line {seen[key]})")
        seen[key] = lineno
        rows.append(row)
    if not header_seen:
        raise RulesError(f"{source}:1: wrong header: the file is empty, expected "
                         f"{','.join(HEADER)!r}")
    return rows


def _numbered(lines: Iterable[str]):
    """(line number, CSV fields) of the lines that are neither blank nor comments."""
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        yield lineno, next(csv.reader([line.rstrip("\r\n")]))


def read_file(path: Path | str) -> list[Row]:
    """(kind, value, slot) rows of the rule file at ``path``, in file order.

    Format: CSV with the header ``kind,value,slot``; ``slot`` empty except for ``pin``
    (an integer >= 1, required); blank and ``#`` lines skipped. Any bad line raises
    :class:`RulesError` ``"<path>:<line>: <reason>"`` (unknown kind, missing value,
    bad slot, pin without slot, wrong header, duplicate rule).
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        return parse_lines(f, str(path))


def read_table(conn) -> list[Row]:
    """(kind, value, slot) rows of ``rerank_rules``, ordered by rule_id.

    ``conn``: a DB-API connection (psycopg2) or a SQLAlchemy connection or engine. The
    caller owns it (nothing is committed or closed here).
    """
    sql = "SELECT rule_id, kind, value, slot FROM rerank_rules ORDER BY rule_id"
    if hasattr(conn, "exec_driver_sql"):  # SQLAlchemy Connection
        fetched = [tuple(r) for r in conn.exec_driver_sql(sql)]
    elif hasattr(conn, "raw_connection"):  # SQLAlchemy Engine
        with conn.connect() as c:
            fetched = [tuple(r) for r in c.exec_driver_sql(sql)]
    else:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            fetched = [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()
    rows = []
    for rule_id, kind, value, slot in fetched:
        try:
            rows.append(_check(str(kind).strip(), str(value).strip(), slot))
        except ValueError as exc:
            raise RulesError(f"rerank_rules:{rule_id}: {exc}") from None
    return rows


@dataclass(frozen=True)
class TagPolicy:
    """The content policy of ``block_tag`` rules: False for an item carrying a blocked tag.

    ``blocked`` holds the item ids resolved from the item tags when the rules were loaded;
    items without known tags pass.
    """

    tags: frozenset[str]  # case-folded
    blocked: frozenset[int]

    def __call__(self, item_id: int) -> bool:
        return int(item_id) not in self.blocked


def tag_policy(tags: Iterable[str], item_tags: Mapping[int, Iterable[str]]) -> TagPolicy:
    """The policy blocking items whose tags include any of ``tags`` (case-insensitive)."""
    wanted = frozenset(t.strip().casefold() for t in tags)
    blocked = frozenset(int(i) for i, have in item_tags.items()
                        if any(t.strip().casefold() in wanted for t in _tag_list(have)))
    return TagPolicy(wanted, blocked)


def _tag_list(tags: object) -> list[str]:
    """An item's tags as strings: a list or array of tags, one tag, or none (None, NaN)."""
    if tags is None or isinstance(tags, float):
        return []
    if isinstance(tags, str):
        return [tags]
    return [str(t) for t in tags if t is not None]


def build(rows: Sequence[Row], item_tags: Mapping[int, Iterable[str]] | None = None) -> Rules:
    """:class:`Rules` from validated rows (pure compute).

    ``block_tag`` rows become ``Rules.policy`` over ``item_tags`` (item id -> tags); they
    need ``item_tags``, so that a content policy is never dropped silently. One item
    pinned to two different slots is an error.
    """
    tags = [v for k, v, _ in rows if k == "block_tag"]
    rest = [(k, v, s) for k, v, s in rows if k != "block_tag"]
    slots: dict[int, int] = {}
    for k, v, s in rest:
        if k == "pin":
            item = int(v)
            if item in slots and slots[item] != s:
                raise RulesError(f"item {item} is pinned to slot {slots[item]} and to "
                                 f"slot {s}")
            slots[item] = int(s)
    rules = rules_from_rows(rest)
    if not tags:
        return rules
    if item_tags is None:
        raise RulesError(f"{len(tags)} block_tag rule(s) ({', '.join(sorted(set(tags)))}) "
                         "need the items' tags: pass item_tags")
    return replace(rules, policy=tag_policy(tags, item_tags))


def load(conn=None, path: Path | str | None = None,
         item_tags: Mapping[int, Iterable[str]] | None = None) -> Rules:
    """The rules of the ``rerank_rules`` table (when ``conn`` is given) and of the file at
    ``path`` (when given and not empty), merged: blocks add up, and an item pinned by both
    must have the same slot in both."""
    rows: list[Row] = []
    if conn is not None:
        rows += read_table(conn)
    if path is not None and str(path):
        rows += read_file(path)
    return build(rows, item_tags)



def blocked_item_ids(rows: Sequence[Row], items: Iterable[tuple[int, object, object]]
                     ) -> frozenset[int]:
    """Item ids that the block rules of ``rows`` keep out of every list (pure compute).

    ``items``: (item_id, category, tags) of the catalog. ``block_item`` ids count whether
    or not the catalog knows them; ``block_category`` matches the category exactly,
    ``block_tag`` any tag case-insensitively (as the re-ranker does).
    """
    out = {int(v) for k, v, _ in rows if k == "block_item"}
    cats = {v for k, v, _ in rows if k == "block_category"}
    tags = frozenset(v.strip().casefold() for k, v, _ in rows if k == "block_tag")
    if cats or tags:
        for item_id, category, item_tags in items:
            if category in cats or any(t.strip().casefold() in tags
                                       for t in _tag_list(item_tags)):
                out.add(int(item_id))
    return frozenset(out)


def blocked_items(conn, path: Path | str | None = None) -> frozenset[int]:
    """Ids of the items the ``rerank_rules`` table and the file at ``path`` block,
    resolved against the catalog (``items``), and the items marked unavailable.
    ``conn``: a psycopg2 connection (the caller's transaction is used; nothing is
    committed)."""
    rows = read_table(conn)
    if path is not None and str(path):
        rows += read_file(path)
    with conn.cursor() as cur:  # items withdrawn from the catalog count as blocked
        cur.execute("SELECT item_id FROM items WHERE NOT available")
        unavailable = frozenset(int(r[0]) for r in cur.fetchall())
    if not any(k in ("block_category", "block_tag") for k, _, _ in rows):
        return blocked_item_ids(rows, []) | unavailable
    cats = [v for k, v, _ in rows if k == "block_category"]
    with conn.cursor() as cur:
        # Candidates only (the category index; a tag's case is checked in Python).
        cur.execute("SELECT item_id, category, tags FROM items WHERE category = ANY(%s) "
                    "OR cardinality(tags) > 0", (cats,))
        catalog = cur.fetchall()
    return blocked_item_ids(rows, catalog) | unavailable


def drop_blocked(items: Sequence[int], *parallel: Sequence, blocked: frozenset[int]
                 ) -> tuple[list, ...]:
    """``items`` and its parallel sequences (scores, reasons, ...) without the blocked
    items, as lists; a sequence given as None stays None."""
    keep = [i for i, item in enumerate(items) if int(item) not in blocked]
    out: list = [[items[i] for i in keep]]
    for seq in parallel:
        out.append(None if seq is None else [seq[i] for i in keep])
    return tuple(out)


def blocked_in_catalog(rules: Rules, items: Iterable[tuple[int, object]]) -> frozenset[int]:
    """Item ids that :class:`Rules` keep out of lists (pure compute): blocked items, items
    of blocked categories, items the content policy refuses. ``items``: (item_id,
    category) of the catalog."""
    out = set(rules.blocked_items)
    for item_id, category in items:
        if category in rules.blocked_categories or \
                (rules.policy is not None and not rules.policy(int(item_id))):
            out.add(int(item_id))
    return frozenset(out)


def drop_blocked_lists(lists: pd.DataFrame, blocked: frozenset[int]
                       ) -> tuple[pd.DataFrame, int]:
    """``lists`` (an ``items`` column and the columns parallel to it: scores, reasons,
    reason_item_ids) without the ``blocked`` items, and how many entries went."""
    if not blocked or lists.empty:
        return lists, 0
    out = lists.copy()
    parallel = [c for c in ("items", "scores", "reasons", "reason_item_ids") if c in out]
    for col in parallel:
        out[col] = out[col].astype(object)
    removed = 0
    for idx, items in zip(out.index, lists["items"], strict=True):
        keep = ~np.isin(np.asarray(items), list(blocked))
        if keep.all():
            continue
        removed += int((~keep).sum())
        for col in parallel:
            value = lists.at[idx, col]
            out.at[idx, col] = value[keep] if isinstance(value, np.ndarray) else \
                [v for v, k in zip(value, keep, strict=True) if k]
    return out, removed
