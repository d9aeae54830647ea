"""The in-memory popular list: top-ups, cold users, and the answer when the database is down.

Loaded at start from the served version's 'popular' list and refreshed every
``popular_refresh_s`` (lazily, by the first request after that, without making other
requests wait). When the database is down at start, or no version has lists, the
snapshot the publish step writes to ``<lake>/serving/popular.json`` is read instead:
``{"model_version": str, "items": [{"item_id": int, "score": float}, ...]}``. With
neither, the list is empty and the reader still answers (an empty list). A list once
loaded is kept while the database has none to replace it.

A list read from the database is topped up with the popular list of its own version
(:meth:`PopularCache.for_version`), so that no answer mixes two versions while a switch
is being noticed.

The list is kept whole here: blocked items (serve/blocks.py) are dropped where it is used
(serve/recommendations.py ``top_up``), so a new block reaches the popular answers and the
answers from memory within the block set's refresh, not the popular list's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serve.store import DatabaseUnavailable, Store

log = logging.getLogger(__name__)

SNAPSHOT_RELPATH = Path("serving") / "popular.json"
# After a failed refresh (or while the list came from the snapshot), try again this soon.
RETRY_S = 1.0


def snapshot_path(lake: str | Path) -> Path:
    """Where the publish step writes the popular snapshot under the lake root."""
    return Path(lake) / SNAPSHOT_RELPATH


@dataclass(frozen=True)
class PopularList:
    model_version: str | None
    items: tuple[int, ...]
    scores: tuple[float, ...]
    origin: str  # "database", "snapshot" or "empty"


EMPTY = PopularList(None, (), (), "empty")


def read_snapshot(path: Path) -> PopularList | None:
    """The snapshot at ``path``, or None when it is missing or malformed."""
    try:
        data = json.loads(path.read_text())
        entries = data["items"]
        items = tuple(int(e["item_id"]) for e in entries)
        scores = tuple(float(e.get("score", 0.0)) for e in entries)
        version = data.get("model_version")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("popular snapshot %s unreadable: %s", path, exc)
        return None
    return PopularList(str(version) if version is not None else None, items, scores,
                       "snapshot")


class PopularCache:
    """The popular list of this process, refreshed from the database when stale."""

    def __init__(self, store: Store, snapshot: Path, refresh_s: float,
                 clock=time.monotonic) -> None:
        self.store = store
        self.snapshot = snapshot
        self.refresh_s = refresh_s
        self.clock = clock
        self._list = EMPTY
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def load(self) -> PopularList:
        """Load at start: from the database, else from the snapshot, else empty."""
        if not self.refresh() or self._list is EMPTY:
            self._load_snapshot()
        return self._list

    def _load_snapshot(self) -> None:
        snap = read_snapshot(self.snapshot)
        if snap is not None:
            self._list = snap
            log.info("popular list from snapshot %s (%d items)", self.snapshot,
                     len(snap.items))

    def refresh(self) -> bool:
        """Read the served version's 'popular' list; False when the database fails.

        The current list is kept when the database fails or has no list to give.
        """
        try:
            got = self.store.read_popular()
        except DatabaseUnavailable:
            self._next_refresh = self.clock() + RETRY_S
            return False
        except Exception:  # a bug or schema problem must not take the reader down
            log.exception("popular list refresh failed")
            self._next_refresh = self.clock() + RETRY_S
            return False
        if got is not None:
            version, items, scores = got
            self._list = PopularList(version, tuple(items), tuple(scores), "database")
        elif self._list is EMPTY:
            self._load_snapshot()
        self._next_refresh = self.clock() + self.refresh_s
        return True

    def for_version(self, version: str | None) -> PopularList:
        """The popular list of ``version``: the current one when it matches, else read
        now (once: it becomes the current list when ``version`` is the served one)."""
        current = self.get()
        if version is None or current.model_version == version:
            return current
        try:
            got = self.store.read_popular(version)
        except DatabaseUnavailable:
            return current
        except Exception:
            log.exception("popular list of %s unreadable", version)
            return current
        if got is None:
            return PopularList(version, (), (), "database")
        found = PopularList(got[0], tuple(got[1]), tuple(got[2]), "database")
        state = self.store.current_state()
        if state is not None and state.version == version:
            self._list = found
            self._next_refresh = self.clock() + self.refresh_s
        return found

    def invalidate(self) -> None:
        """Refresh on the next request (the live version changed)."""
        self._next_refresh = 0.0

    def get(self, refresh: bool = True) -> PopularList:
        """The current list; refreshes it first when stale and the database is up."""
        if (refresh and self.clock() >= self._next_refresh and not self.store.is_down
                and self._lock.acquire(blocking=False)):
            try:
                if self.clock() >= self._next_refresh:
                    self.refresh()
            finally:
                self._lock.release()
        return self._list
