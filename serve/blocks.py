"""The items no answer may show: the block rules, resolved to item ids, cached per process.

The rules are those of docs/rules.md: ``block_item``, ``block_category`` (the item's
catalog category, matched exactly) and ``block_tag`` (one of the item's tags,
case-insensitively), from the ``rerank_rules`` table and the file named by
``RECS_RULES_FILE``, together; and every item marked unavailable (``items.available``,
set through ``PUT /api/v1/items``). One query resolves them to item ids; it runs at most once
per ``ttl_s`` per process (lazily, by the first request after that, which does not make
other requests wait), never once per request. While the database cannot be read, the
last set is kept (a rule added then takes effect once it can be read again).

The file is read at start (a bad file stops the reader, naming the file and line) and
again when it changes; a bad edit later is logged and the last good rules are kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

from serve.store import DatabaseUnavailable, Store

log = logging.getLogger(__name__)

# After a failed refresh, try again this soon.
RETRY_S = 1.0

# The table's block rules and the file's (passed as two arrays), resolved to item ids,
# and the items marked unavailable (PUT /api/v1/items, items.available).
BLOCKED_SQL = """
WITH r AS (
    SELECT kind, value FROM rerank_rules
    WHERE kind IN ('block_item', 'block_category', 'block_tag')
    UNION ALL
    SELECT kind, value FROM unnest(%(kinds)s::text[], %(values)s::text[]) AS f(kind, value)
)
SELECT value::bigint FROM r WHERE kind = 'block_item'
UNION
SELECT i.item_id FROM items i JOIN r ON r.kind = 'block_category' AND i.category = r.value
UNION
SELECT item_id FROM items WHERE NOT available
UNION
SELECT i.item_id FROM items i
WHERE EXISTS (SELECT 1 FROM r WHERE r.kind = 'block_tag')
  AND EXISTS (SELECT 1 FROM unnest(i.tags) AS t(tag)
              JOIN r ON r.kind = 'block_tag' AND lower(btrim(t.tag)) = lower(btrim(r.value)))
"""


def read_rules_file(path: str) -> list[tuple[str, str]]:
    """The (kind, value) block rules of the rule file at ``path`` (jobs/rules.py's format
    and checks; raises its RulesError naming the file and line)."""
    from jobs import rules  # the one parser of the format, shared with the precompute

    return [(kind, value) for kind, value, _ in rules.read_file(path)
            if kind.startswith("block_")]


class BlockSet:
    """The blocked item ids of this process, refreshed every ``ttl_s``."""

    def __init__(self, store: Store, rules_file: str = "", ttl_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.rules_file = rules_file
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: frozenset[int] = frozenset()
        self._file_rules: list[tuple[str, str]] = []
        self._file_stamp: tuple[int, int] | None = None
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def load(self) -> frozenset[int]:
        """Load at start: the file must be readable and valid (else RulesError or
        OSError); the database may be down (then the set fills once it answers)."""
        if self.rules_file:
            self._file_rules = read_rules_file(self.rules_file)
            self._file_stamp = _stamp(self.rules_file)
        self.refresh()
        return self._items

    def _reread_file(self) -> None:
        if not self.rules_file:
            return
        try:
            stamp = _stamp(self.rules_file)
            if stamp == self._file_stamp:
                return
            self._file_rules = read_rules_file(self.rules_file)
            self._file_stamp = stamp
            log.info("rule file %s read again: %d block rules", self.rules_file,
                     len(self._file_rules))
        except Exception as exc:  # a bad edit must not take the reader down
            log.error("rule file %s unreadable, keeping its last good rules: %s",
                      self.rules_file, exc)

    def refresh(self) -> bool:
        """Resolve the rules now; False (and the last set kept) when that fails."""
        self._reread_file()
        kinds = [k for k, _ in self._file_rules]
        values = [v for _, v in self._file_rules]
        try:
            rows = self.store.fetchall(BLOCKED_SQL, {"kinds": kinds, "values": values})
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            if not isinstance(exc, DatabaseUnavailable):
                log.error("block rules unreadable, keeping the last %d blocked items: %s",
                          len(self._items), exc)
            self._next_refresh = self.clock() + min(RETRY_S, self.ttl_s)
            return False
        items = frozenset(int(r[0]) for r in rows)
        if items != self._items:
            log.info("blocked items: %d", len(items))
        self._items = items
        self._next_refresh = self.clock() + self.ttl_s
        return True

    def get(self) -> frozenset[int]:
        """The blocked items; refreshed first when stale (by one request at a time: the
        others use the current set meanwhile)."""
        if (self.clock() >= self._next_refresh and not self.store.is_down
                and self._lock.acquire(blocking=False)):
            try:
                if self.clock() >= self._next_refresh:
                    self.refresh()
            finally:
                self._lock.release()
        return self._items


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(Path(path))
    return st.st_mtime_ns, st.st_size
