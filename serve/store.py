"""The reader's database adapter: a small connection pool, a circuit breaker, the SQL.

Connections are opened with a short ``connect_timeout`` and a per-connection
``statement_timeout`` (set in the start-up packet, so it costs no round trip). Reads run
in autocommit mode, one statement each; an event batch runs in one transaction.

When the database fails (refused, dropped, or a statement timed out), the breaker opens
for ``backoff_s``: calls fail at once with :class:`DatabaseUnavailable` instead of
waiting on dead connections, and the idle connections are thrown away. The first call
after the back-off tries again, so the reader recovers by itself.

The live version and the time up to which it saw events are cached per process; every
list read also returns the current ``serving_state.live_version`` so that a switch is
noticed by the very next request (the cache is then refreshed and the read repeated).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from core.db import libpq_dsn

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2  # libpq's minimum
BACKOFF_S = 1.0
POOL_MAX = 8
# How many of the user's newest items anchor "Because you watched X".
ANCHORS = 3
# How much of each list the hot path fetches beyond what a response can show, so that
# exclusions rarely leave a list short.
SIMILAR_FETCH = 20
RECENT_MAX = 1000

# Connections held by a parent process before a fork: never used or closed by a child
# (closing would end the parent's session).
_inherited: list[Any] = []


class DatabaseUnavailable(RuntimeError):
    """The database is down, unreachable or too slow; the breaker may be open."""


@dataclass(frozen=True)
class LiveState:
    """The live version and the newest event time its lists saw."""

    version: str | None
    data_until: dt.datetime | None


@dataclass(frozen=True)
class Anchor:
    """A recent item of the user with the head of its precomputed similar list."""

    item_id: int
    title: str
    items: list[int]
    scores: list[float]


@dataclass(frozen=True)
class UserRead:
    """One user's precomputed list (``items`` is None when absent) and recent events."""

    version: str
    items: list[int] | None
    scores: list[float]
    reasons: list[str]
    reason_item_ids: list[int | None]
    history_tail: list[int]
    recent: list[int]  # items with events since data_until, newest first
    anchors: list[Anchor]


@dataclass(frozen=True)
class ListRead:
    """A similar or trending list (``items`` is None when absent)."""

    version: str
    items: list[int] | None
    scores: list[float]
    reasons: list[str]
    recent: list[int]
    anchor_id: int | None = None
    anchor_title: str | None = None
    anchor_known: bool = False


# --- SQL ---------------------------------------------------------------------------------

LIVE_STATE_SQL = """
SELECT s.live_version,
       COALESCE(r.data_until, r.published_at, r.finished_at, r.started_at)
FROM serving_state s
LEFT JOIN model_runs r ON r.model_version = s.live_version
"""

# Items the user touched since the live lists were computed. ``since`` is a literal so
# that the planner prunes interactions' day partitions; (user_id, "timestamp") is indexed.
_RECENT_CTE = """
recent AS (
    SELECT item_id, max("timestamp") AS ts
    FROM interactions
    WHERE user_id = %(user_id)s AND "timestamp" > %(since)s
    GROUP BY item_id
    ORDER BY ts DESC, item_id DESC
    LIMIT %(recent_max)s
)"""

PERSONALIZED_SQL = f"""
WITH {_RECENT_CTE},
anchors AS (
    SELECT r.item_id, r.ts, COALESCE(i.title, 'item ' || r.item_id) AS title
    FROM (SELECT item_id, ts FROM recent ORDER BY ts DESC, item_id DESC
          LIMIT %(anchors)s) r
    LEFT JOIN items i ON i.item_id = r.item_id
)
SELECT (SELECT live_version FROM serving_state) AS live_version,
       rec.items, rec.scores, rec.reasons, rec.reason_item_ids, rec.history_tail,
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent,
       (SELECT json_agg(json_build_object(
                   'item_id', a.item_id, 'title', a.title,
                   'items', s.items[1:%(similar_fetch)s],
                   'scores', s.scores[1:%(similar_fetch)s]) ORDER BY a.ts DESC, a.item_id DESC)
          FROM anchors a
          JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = a.item_id
       ) AS anchors
FROM (SELECT 1) AS one
LEFT JOIN recommendations rec
       ON rec.model_version = %(version)s AND rec.user_id = %(user_id)s
"""

# The similar list of an anchor: the given item, else the user's newest recent item,
# else the newest item of the history kept with their precomputed list.
USER_SIMILAR_SQL = f"""
WITH {_RECENT_CTE},
anchor AS (
    SELECT COALESCE(
        %(item_id)s::bigint,
        (SELECT item_id FROM recent ORDER BY ts DESC, item_id DESC LIMIT 1),
        (SELECT rec.history_tail[1] FROM recommendations rec
          WHERE rec.model_version = %(version)s AND rec.user_id = %(user_id)s)
    ) AS item_id
)
SELECT (SELECT live_version FROM serving_state) AS live_version,
       a.item_id, i.title, i.item_id IS NOT NULL,
       s.items, s.scores, s.reasons,
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent
FROM anchor a
LEFT JOIN items i ON i.item_id = a.item_id
LEFT JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = a.item_id
"""

ITEM_SIMILAR_SQL = """
SELECT (SELECT live_version FROM serving_state) AS live_version,
       %(item_id)s::bigint, i.title, i.item_id IS NOT NULL,
       s.items, s.scores, s.reasons, NULL::bigint[]
FROM (SELECT 1) AS one
LEFT JOIN items i ON i.item_id = %(item_id)s
LEFT JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = %(item_id)s
"""

USER_TRENDING_SQL = f"""
WITH {_RECENT_CTE}
SELECT (SELECT live_version FROM serving_state) AS live_version,
       t.items, t.scores, t.reasons,
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent
FROM (SELECT 1) AS one
LEFT JOIN trending t ON t.model_version = %(version)s AND t.list_name = %(list_name)s
"""

TRENDING_SQL = """
SELECT (SELECT live_version FROM serving_state) AS live_version,
       t.items, t.scores, t.reasons, NULL::bigint[]
FROM (SELECT 1) AS one
LEFT JOIN trending t ON t.model_version = %(version)s AND t.list_name = %(list_name)s
"""

POPULAR_SQL = """
SELECT s.live_version, t.items, t.scores
FROM serving_state s
JOIN trending t ON t.model_version = s.live_version AND t.list_name = 'popular'
"""

INSERT_EVENTS_SQL = """
INSERT INTO interactions
    (event_id, user_id, item_id, event_type, rating, "timestamp", context)
VALUES %s
ON CONFLICT (event_id, "timestamp") DO NOTHING
RETURNING 1
"""
INSERT_EVENTS_TEMPLATE = (
    "(COALESCE(%s, nextval('interactions_event_id_seq')), %s, %s, %s, %s, %s, %s::jsonb)"
)

ENSURE_PARTITIONS_SQL = "SELECT recs_ensure_interaction_partitions(%s, %s)"
KNOWN_DAYS_AHEAD = 7


# --- the store ---------------------------------------------------------------------------

class Store:
    """Pooled, breaker-guarded access to the serving tables of one database."""

    def __init__(self, dsn: str, statement_timeout_ms: int, *, pool_max: int = POOL_MAX,
                 backoff_s: float = BACKOFF_S, connect_timeout_s: int = CONNECT_TIMEOUT_S
                 ) -> None:
        self.dsn = libpq_dsn(dsn)
        self.statement_timeout_ms = statement_timeout_ms
        self.pool_max = pool_max
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_max)
        self._pid = os.getpid()
        self._down_until = 0.0
        self._live: LiveState | None = None
        self._known_days: set[dt.date] = set()
        # Called with the new LiveState when the live version is seen to change.
        self.on_switch: list[Callable[[LiveState], None]] = []

    # -- breaker and pool --

    @property
    def is_down(self) -> bool:
        """True while the breaker is open (a recent failure, back-off not over)."""
        return time.monotonic() < self._down_until

    def _trip(self, exc: BaseException) -> None:
        first = not self.is_down
        self._down_until = time.monotonic() + self.backoff_s
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)
        if first:
            log.warning("database unavailable, serving fallbacks for %.1fs: %s",
                        self.backoff_s, str(exc).strip().splitlines()[0] if str(exc) else exc)

    def _connect(self) -> psycopg2.extensions.connection:
        options = f"-c statement_timeout={int(self.statement_timeout_ms)} -c jit=off"
        conn = psycopg2.connect(self.dsn, connect_timeout=self.connect_timeout_s,
                                options=options, application_name="recs-serve",
                                keepalives=1, keepalives_idle=10, keepalives_interval=2,
                                keepalives_count=3,
                                # A server that vanished mid-query (no RST) fails the
                                # socket this soon instead of after minutes of retries.
                                tcp_user_timeout=max(1000, 2 * int(self.statement_timeout_ms)))
        conn.autocommit = True
        return conn

    def _checkout(self) -> psycopg2.extensions.connection:
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours
            with self._lock:
                _inherited.extend(self._idle)
                self._idle = []
                self._pid = os.getpid()
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return self._connect()

    def _checkin(self, conn: psycopg2.extensions.connection) -> None:
        if conn.closed or not conn.autocommit:
            _close_quietly(conn)
            return
        with self._lock:
            if len(self._idle) < self.pool_max:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A pooled autocommit connection; database failures become DatabaseUnavailable."""
        if self.is_down:
            raise DatabaseUnavailable("database unavailable (backing off)")
        if not self._slots.acquire(timeout=self.connect_timeout_s):
            raise DatabaseUnavailable("no free database connection")
        conn = None
        try:
            try:
                conn = self._checkout()
                yield conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if conn is not None and not isinstance(exc, psycopg2.extensions.QueryCanceledError):
                    _close_quietly(conn)
                self._trip(exc)
                raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
            except BaseException:
                if conn is not None and not conn.autocommit:
                    _close_quietly(conn)  # a transaction in an unknown state
                raise
            finally:
                if conn is not None and not conn.closed:
                    if conn.autocommit:
                        self._checkin(conn)
                    else:
                        _close_quietly(conn)
        finally:
            self._slots.release()

    def fetchone(self, sql: str, params: Any = None) -> tuple | None:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    # -- live version --

    def live_state(self, refresh: bool = False) -> LiveState:
        """The live version and its data_until (cached; ``refresh`` reads it again)."""
        state = self._live
        if state is None or refresh:
            row = self.fetchone(LIVE_STATE_SQL)
            previous = self._live
            state = LiveState(row[0], row[1]) if row else LiveState(None, None)
            self._live = state
            if previous is not None and previous.version != state.version:
                log.info("live version switched: %s -> %s", previous.version, state.version)
                for listener in self.on_switch:
                    listener(state)
        return state

    def _read(self, sql: str, params: dict[str, Any]) -> tuple[LiveState, tuple] | None:
        """Run a list read against the cached live version, re-reading after a switch.

        Returns None when no version is live.
        """
        state = self.live_state()
        for attempt in range(2):
            if state.version is None:
                if attempt == 0:
                    state = self.live_state(refresh=True)
                    continue
                return None
            since = state.data_until or dt.datetime.now(dt.UTC)
            row = self.fetchone(sql, {**params, "version": state.version, "since": since,
                                      "recent_max": RECENT_MAX})
            if row is not None and row[0] == state.version:
                return state, row
            state = self.live_state(refresh=True)
        return None

    # -- reads --

    def read_user(self, user_id: int) -> UserRead | None:
        """The user's precomputed list, recent items and anchors (None: no live version)."""
        got = self._read(PERSONALIZED_SQL, {"user_id": user_id, "anchors": ANCHORS,
                                            "similar_fetch": SIMILAR_FETCH})
        if got is None:
            return None
        state, row = got
        _, items, scores, reasons, reason_ids, tail, recent, anchors = row
        return UserRead(
            version=state.version or "",
            items=items,
            scores=scores or [],
            reasons=reasons or [],
            reason_item_ids=reason_ids or [],
            history_tail=tail or [],
            recent=recent or [],
            anchors=[Anchor(int(a["item_id"]), a["title"], [int(x) for x in a["items"] or []],
                            [float(x) for x in a["scores"] or []]) for a in anchors or []],
        )

    def read_similar(self, item_id: int | None, user_id: int | None = None) -> ListRead | None:
        """The similar list of ``item_id`` (or of the user's newest item)."""
        if user_id is None:
            got = self._read(ITEM_SIMILAR_SQL, {"item_id": item_id})
        else:
            got = self._read(USER_SIMILAR_SQL, {"item_id": item_id, "user_id": user_id})
        if got is None:
            return None
        state, row = got
        _, anchor_id, title, known, items, scores, reasons, recent = row
        return ListRead(state.version or "", items, scores or [], reasons or [], recent or [],
                        anchor_id, title, bool(known))

    def read_trending(self, list_name: str, user_id: int | None = None) -> ListRead | None:
        """A non-personal list of the live version, with the user's recent items."""
        if user_id is None:
            got = self._read(TRENDING_SQL, {"list_name": list_name})
        else:
            got = self._read(USER_TRENDING_SQL, {"list_name": list_name, "user_id": user_id})
        if got is None:
            return None
        state, row = got
        _, items, scores, reasons, recent = row
        return ListRead(state.version or "", items, scores or [], reasons or [], recent or [])

    def read_popular(self) -> tuple[str, list[int], list[float]] | None:
        """The live version's 'popular' list (None when there is none)."""
        row = self.fetchone(POPULAR_SQL)
        if row is None:
            return None
        return row[0], list(row[1] or []), [float(s) for s in row[2] or []]

    # -- writes --

    def insert_events(self, rows: Sequence[tuple], days: set[dt.date]) -> int:
        """Store event rows in one transaction; returns how many were new.

        ``rows`` are (event_id|None, user_id, item_id, event_type, rating, timestamp,
        context_json|None). Missing day partitions are created first (and once per
        process per day); a partition missing despite the cache is created on the
        "no partition" error and the batch retried.
        """
        unknown = days - self._known_days
        if unknown:
            self.ensure_days(unknown)
        try:
            return self._insert(rows)
        except psycopg2.Error as exc:
            if "no partition of relation" not in str(exc):
                raise
            self._known_days -= days
            self.ensure_days(days)
            return self._insert(rows)

    def _insert(self, rows: Sequence[tuple]) -> int:
        with self.connection() as conn:
            conn.autocommit = False
            with conn, conn.cursor() as cur:  # commits, or rolls back on error
                stored = psycopg2.extras.execute_values(
                    cur, INSERT_EVENTS_SQL, rows, template=INSERT_EVENTS_TEMPLATE,
                    page_size=max(len(rows), 1), fetch=True)
            conn.autocommit = True
            return len(stored)

    def ensure_days(self, days: set[dt.date]) -> None:
        """Create the interaction partitions for ``days`` (and the week after each)."""
        with self.connection() as conn:
            conn.autocommit = False
            with conn, conn.cursor() as cur:
                # Creating a partition may wait on locks: allow longer than a read.
                cur.execute("SET LOCAL statement_timeout = '5s'")
                for day in sorted(days):
                    cur.execute(ENSURE_PARTITIONS_SQL,
                                (day, day + dt.timedelta(days=KNOWN_DAYS_AHEAD)))
            conn.autocommit = True
        for day in days:
            self._known_days.update(day + dt.timedelta(days=i)
                                    for i in range(KNOWN_DAYS_AHEAD + 1))


def _close_quietly(conn: psycopg2.extensions.connection) -> None:
    try:
        conn.close()
    except Exception:  # already broken
        pass
