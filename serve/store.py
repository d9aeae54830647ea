"""The reader's database adapter: a small connection pool, two circuit breakers, the SQL.

Connections are opened with a short ``connect_timeout`` and a per-connection
``statement_timeout`` (set in the start-up packet, so it costs no round trip). Reads run
in autocommit mode, one statement each; an event batch runs in one transaction. No
request ever runs DDL: an event whose day has no partition lands in the DEFAULT partition
``interactions_default`` (sql/008_hardening.sql), which the maintenance task empties.

Reads and writes have separate breakers (:class:`Breaker`), so that reads timing out
never refuse an event post, nor the reverse. A breaker opens for ``backoff_s`` when the
database is gone (connection refused or dropped: at once) or when most recent calls failed
(at least ``FAILURE_RATE`` of at least ``MIN_CALLS`` calls within ``WINDOW_S``): one
user's slow query (a statement timeout) does not open it by itself. While open, calls
fail at once with :class:`DatabaseUnavailable` instead of waiting on dead connections.
After the back-off the breaker is half open: one call (the probe) tries the database
while the others still fail at once; the probe's success closes the breaker.

The recent-events scan behind real-time exclusion and "Because you watched" reads at
most ``RECENT_SCAN_MAX`` of the user's newest events of at most ``RECENT_WINDOW``, so a
user with a huge history costs the same as any other.

The served version and the time up to which it saw events are cached per process (and
re-read every ``LIVE_TTL_S``); every list read also returns the current
``serving_state.live_version`` so that a switch is noticed by the very next request (the
cache is then refreshed and the read repeated). When the live version's lists are
missing, the previous version is served (``LiveState.degraded``); with neither, reads
find no version and the caller answers from the popular list.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from core.constants import NO_REASON_ITEM
from core.db import libpq_dsn
from serve.apikeys import LOOKUP_SQL as LOOKUP_KEY_SQL

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2  # libpq's minimum
BACKOFF_S = 1.0
# How long the served version is trusted before it is read again (a switch is seen at
# once anyway; this bounds how long lists that vanished without a switch go unnoticed).
LIVE_TTL_S = 5.0
# A served version other than the live one is checked again this soon.
DEGRADED_TTL_S = 0.5
# List reads tried against a fresh live version before answering without one.
READ_ATTEMPTS = 3
POOL_MAX = 8
# How many of the user's newest items anchor "Because you watched X".
ANCHORS = 3
# How much of each list the hot path fetches beyond what a response can show, so that
# exclusions rarely leave a list short.
SIMILAR_FETCH = 20
RECENT_MAX = 1000
# The recent-events scan reads at most this many of the user's newest events, and none
# older than RECENT_WINDOW (also when the served lists are older than that).
RECENT_SCAN_MAX = 5000
RECENT_WINDOW = dt.timedelta(days=30)
# The breaker opens when at least FAILURE_RATE of at least MIN_CALLS calls of the last
# WINDOW_S seconds failed (a lost connection opens it at once).
WINDOW_S = 5.0
MIN_CALLS = 10
FAILURE_RATE = 0.5

# Connections held by a parent process before a fork: never used or closed by a child
# (closing would end the parent's session).
_inherited: list[Any] = []


class DatabaseUnavailable(RuntimeError):
    """The database is down, unreachable or too slow; the breaker may be open.

    ``cause``: ``database_unavailable`` (refused, dropped), ``statement_timeout`` or
    ``backing_off`` (the breaker is open after a recent failure).
    """

    def __init__(self, message: str, cause: str = "database_unavailable") -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class LiveState:
    """The version served, the newest event time its lists saw, and why it is served.

    ``version`` is ``live`` normally; the previous version when the live one's lists are
    missing (``degraded == "previous_version"``); None when neither has lists.
    """

    version: str | None
    data_until: dt.datetime | None
    live: str | None = None
    degraded: str | None = None


@dataclass(frozen=True)
class Pin:
    """A version an experiment serves instead of the live one, and the end of its data
    (serve/experiments.py)."""

    version: str
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
    degraded: str | None = None  # "previous_version" when the live lists are missing


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
    # A second list that fills a filtered one (country filtered to a category).
    fill_items: list[int] | None = None
    fill_scores: list[float] | None = None
    fill_reasons: list[str] | None = None
    degraded: str | None = None


@dataclass(frozen=True)
class PreferencesRead:
    """A user's onboarding preferences as lists: the liked items, their similar lists
    (as anchors) and the chosen categories' trending lists, in the user's order."""

    version: str
    liked: list[int]
    similar: list[Anchor]
    categories: list[tuple[str, list[int], list[float]]]
    degraded: str | None = None


# --- SQL ---------------------------------------------------------------------------------

LIVE_STATE_SQL = """
SELECT s.live_version, s.previous_version,
       (SELECT COALESCE(m.data_until, m.published_at, m.finished_at, m.started_at)
          FROM model_runs m WHERE m.model_version = s.live_version),
       (SELECT COALESCE(m.data_until, m.published_at, m.finished_at, m.started_at)
          FROM model_runs m WHERE m.model_version = s.previous_version)
FROM serving_state s
"""

# A version "has lists" when its recommendations partition holds a row. One version per
# statement, given as a value and planned for that value (never a prepared statement):
# the planner then reads that version's partition alone, or none. Asked with the version
# taken from a column (serving_state's) or through a generic plan while only one
# partition exists, Postgres read every row of the partition there was: 480 ms for a
# million users' lists, past the reads' statement timeout, so every request was answered
# from memory after the first publish of a large catalog (bench/load.py --users 1000000).
HAS_LISTS_SQL = \
    "SELECT EXISTS (SELECT 1 FROM recommendations WHERE model_version = %(version)s)"

# Items the user touched since the live lists were computed: of the user's newest
# ``scan_max`` events only (read backwards on the (user_id, "timestamp") index), so that
# a user with a huge history costs no more than others. ``since`` prunes interactions'
# day partitions when the statement runs.
_RECENT_CTE = """
recent AS (
    SELECT item_id, max(ts) AS ts
    FROM (SELECT item_id, "timestamp" AS ts
          FROM interactions
          WHERE user_id = %(user_id)s AND "timestamp" > %(since)s
          ORDER BY "timestamp" DESC
          LIMIT %(scan_max)s) newest
    GROUP BY item_id
    ORDER BY ts DESC, item_id DESC
    LIMIT %(recent_max)s
)"""

PERSONALIZED_SQL = f"""
WITH {_RECENT_CTE},
anchors AS (
    SELECT r.item_id, r.ts, COALESCE(i.title, 'item ' || r.item_id) AS title
    FROM (SELECT %(page_item)s::bigint AS item_id, 'infinity'::timestamptz AS ts
          WHERE %(page_item)s::bigint IS NOT NULL
          UNION ALL
          (SELECT item_id, ts FROM recent
           WHERE item_id IS DISTINCT FROM %(page_item)s::bigint
           ORDER BY ts DESC, item_id DESC LIMIT %(anchors)s)) r
    LEFT JOIN items i ON i.item_id = r.item_id
)
SELECT (SELECT live_version FROM serving_state) AS live_version,
       rec.items[1:n.fetch], rec.scores[1:n.fetch], rec.reasons[1:n.fetch],
       rec.reason_item_ids[1:n.fetch], rec.history_tail,
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent,
       (SELECT json_agg(json_build_object(
                   'item_id', a.item_id, 'title', a.title,
                   'items', s.items[1:%(similar_fetch)s],
                   'scores', s.scores[1:%(similar_fetch)s]) ORDER BY a.ts DESC, a.item_id DESC)
          FROM anchors a
          JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = a.item_id
       ) AS anchors,
       CASE WHEN rec.user_id IS NULL THEN EXISTS (
           SELECT 1 FROM recommendations v WHERE v.model_version = %(version)s) END AS seen
FROM (SELECT %(fetch)s::int + (SELECT count(*) FROM recent)::int AS fetch) AS n
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
       s.items[1:n.fetch], s.scores[1:n.fetch], s.reasons[1:n.fetch],
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent,
       CASE WHEN s.item_id IS NULL THEN EXISTS (
           SELECT 1 FROM similar_items v WHERE v.model_version = %(version)s) END AS seen
FROM anchor a
CROSS JOIN (SELECT %(fetch)s::int + (SELECT count(*) FROM recent)::int AS fetch) AS n
LEFT JOIN items i ON i.item_id = a.item_id
LEFT JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = a.item_id
"""

ITEM_SIMILAR_SQL = """
SELECT (SELECT live_version FROM serving_state) AS live_version,
       %(item_id)s::bigint, i.title, i.item_id IS NOT NULL,
       s.items[1:%(fetch)s::int], s.scores[1:%(fetch)s::int], s.reasons[1:%(fetch)s::int],
       NULL::bigint[],
       CASE WHEN s.item_id IS NULL THEN EXISTS (
           SELECT 1 FROM similar_items v WHERE v.model_version = %(version)s) END AS seen
FROM (SELECT 1) AS one
LEFT JOIN items i ON i.item_id = %(item_id)s
LEFT JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = %(item_id)s
"""

USER_TRENDING_SQL = f"""
WITH {_RECENT_CTE}
SELECT (SELECT live_version FROM serving_state) AS live_version,
       t.items[1:n.fetch], t.scores[1:n.fetch], t.reasons[1:n.fetch],
       (SELECT array_agg(item_id ORDER BY ts DESC, item_id DESC) FROM recent) AS recent,
       CASE WHEN t.list_name IS NULL THEN EXISTS (
           SELECT 1 FROM trending v WHERE v.model_version = %(version)s) END AS seen
FROM (SELECT %(fetch)s::int + (SELECT count(*) FROM recent)::int AS fetch) AS n
LEFT JOIN trending t ON t.model_version = %(version)s AND t.list_name = %(list_name)s
"""

TRENDING_SQL = """
SELECT (SELECT live_version FROM serving_state) AS live_version,
       t.items[1:%(fetch)s::int], t.scores[1:%(fetch)s::int], t.reasons[1:%(fetch)s::int],
       NULL::bigint[],
       CASE WHEN t.list_name IS NULL THEN EXISTS (
           SELECT 1 FROM trending v WHERE v.model_version = %(version)s) END AS seen
FROM (SELECT 1) AS one
LEFT JOIN trending t ON t.model_version = %(version)s AND t.list_name = %(list_name)s
"""

# A country list filtered to a category (the items' catalog category), then the
# category's own list to fill it. items is NULL when the country list is missing.
TRENDING_FILTERED_SQL = """
SELECT (SELECT live_version FROM serving_state) AS live_version,
       CASE WHEN t.list_name IS NULL THEN NULL ELSE COALESCE(f.items, '{}') END,
       COALESCE(f.scores, '{}'), COALESCE(f.reasons, '{}'), NULL::bigint[],
       c.items, c.scores, c.reasons,
       CASE WHEN t.list_name IS NULL THEN EXISTS (
           SELECT 1 FROM trending v WHERE v.model_version = %(version)s) END AS seen
FROM (SELECT 1) AS one
LEFT JOIN trending t ON t.model_version = %(version)s AND t.list_name = %(list_name)s
LEFT JOIN LATERAL (
    SELECT array_agg(u.item ORDER BY u.pos) AS items, array_agg(u.score ORDER BY u.pos) AS scores,
           array_agg(u.reason ORDER BY u.pos) AS reasons
    FROM unnest(t.items, t.scores, t.reasons) WITH ORDINALITY AS u(item, score, reason, pos)
    JOIN items i ON i.item_id = u.item
    WHERE i.category = %(category)s
) f ON true
LEFT JOIN trending c ON c.model_version = %(version)s AND c.list_name = %(fill_list)s
"""

# The cold-start answer's lists (a user without a precomputed list): the similar lists
# of the items the user liked at onboarding, and the trending lists of the categories
# chosen, in the user's order; ``liked`` is every liked item (never recommended back).
PREFERENCES_SQL = """
WITH p AS (SELECT preferences FROM users WHERE user_id = %(user_id)s),
liked AS (SELECT x::bigint AS item_id, o
          FROM p, jsonb_array_elements_text(
                  CASE WHEN jsonb_typeof(p.preferences->'items') = 'array'
                       THEN p.preferences->'items' ELSE '[]' END) WITH ORDINALITY AS e(x, o)
          WHERE x ~ '^[0-9]{1,18}$'),
cats AS (SELECT c, o
         FROM p, jsonb_array_elements_text(
                 CASE WHEN jsonb_typeof(p.preferences->'categories') = 'array'
                      THEN p.preferences->'categories' ELSE '[]' END) WITH ORDINALITY AS e(c, o))
SELECT (SELECT live_version FROM serving_state) AS live_version,
       (SELECT array_agg(item_id ORDER BY o) FROM liked) AS liked,
       (SELECT json_agg(json_build_object(
                   'item_id', l.item_id, 'title', COALESCE(i.title, 'item ' || l.item_id),
                   'items', s.items[1:%(fetch)s], 'scores', s.scores[1:%(fetch)s])
                   ORDER BY l.o)
          FROM liked l
          JOIN similar_items s ON s.model_version = %(version)s AND s.item_id = l.item_id
          LEFT JOIN items i ON i.item_id = l.item_id) AS similar,
       (SELECT json_agg(json_build_object(
                   'category', c.c, 'items', t.items[1:%(fetch)s],
                   'scores', t.scores[1:%(fetch)s]) ORDER BY c.o)
          FROM cats c
          JOIN trending t ON t.model_version = %(version)s
                         AND t.list_name = 'trending:category:' || c.c) AS categories,
       true
"""

POPULAR_SQL = """
SELECT items, scores FROM trending WHERE model_version = %(version)s AND list_name = 'popular'
"""

INSERT_EVENTS_SQL = """
INSERT INTO interactions
    (event_id, user_id, item_id, event_type, rating, "timestamp", context, key_id,
     request_id)
VALUES %s
ON CONFLICT (event_id, "timestamp") DO NOTHING
RETURNING 1
"""
INSERT_EVENTS_TEMPLATE = (
    "(COALESCE(%s, nextval('interactions_event_id_seq')), %s, %s, %s, %s, %s, %s::jsonb, %s, "
    "%s::uuid)"
)


# --- prepared statements ----------------------------------------------------------------

_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Statement:
    """A read prepared once per connection (``PREPARE``), then run with ``EXECUTE``.

    Planning the reads costs more than running them (partitioned tables); connections
    use ``plan_cache_mode=force_generic_plan``, so the plan is made once per connection
    and partitions are pruned when it runs.
    """

    name: str
    text: str  # with $1, $2... placeholders
    params: tuple[str, ...]  # the name of each placeholder, in order

    @property
    def execute(self) -> str:
        if not self.params:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name}({', '.join(['%s'] * len(self.params))})"


def statement(name: str, sql: str) -> Statement:
    """``sql`` with ``%(name)s`` placeholders as a Statement named ``name``."""
    names: list[str] = []

    def number(m: re.Match) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return Statement(name, _NAMED.sub(number, sql), tuple(names))


class _Connection(psycopg2.extensions.connection):
    """A connection that remembers the statements prepared on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


LIVE_STATE = statement("recs_live_state", LIVE_STATE_SQL)
PERSONALIZED = statement("recs_personalized", PERSONALIZED_SQL)
USER_SIMILAR = statement("recs_user_similar", USER_SIMILAR_SQL)
ITEM_SIMILAR = statement("recs_item_similar", ITEM_SIMILAR_SQL)
USER_TRENDING = statement("recs_user_trending", USER_TRENDING_SQL)
TRENDING = statement("recs_trending", TRENDING_SQL)
TRENDING_FILTERED = statement("recs_trending_filtered", TRENDING_FILTERED_SQL)
POPULAR = statement("recs_popular", POPULAR_SQL)
PREFERENCES = statement("recs_preferences", PREFERENCES_SQL)
LOOKUP_KEY = statement("recs_lookup_key", LOOKUP_KEY_SQL.replace("%s", "%(prefix)s"))


# --- the breakers ------------------------------------------------------------------------

class Breaker:
    """Fails calls at once while the database is gone or mostly failing.

    Closed: every call goes through; :meth:`record` keeps the outcomes of the last
    ``window_s`` seconds. It opens for ``backoff_s`` on a fatal failure (the connection
    was refused or dropped: the server is gone) or when at least ``failure_rate`` of at
    least ``min_calls`` recent calls failed (statement timeouts: one slow query alone
    never opens it). Open: :meth:`admit` raises ``DatabaseUnavailable("backing_off")``.
    Half open (back-off over): one call, the probe, goes through; its success closes the
    breaker, its failure opens it again.
    """

    def __init__(self, name: str, backoff_s: float, *, window_s: float = WINDOW_S,
                 min_calls: int = MIN_CALLS, failure_rate: float = FAILURE_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.backoff_s = backoff_s
        self.window_s = window_s
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.clock = clock
        self.tripped = False
        self._down_until = 0.0
        self._probing = False
        self._calls: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def is_down(self) -> bool:
        """True while open (back-off not over, or a probe in flight)."""
        return self.tripped and (self.clock() < self._down_until or self._probing)

    def admit(self) -> bool:
        """Let a call through; True when it is the half-open probe (then pass
        ``probe=True`` to :meth:`record`)."""
        if not self.tripped:
            return False
        with self._lock:
            if self.tripped:
                if self.clock() < self._down_until or self._probing:
                    raise DatabaseUnavailable("database unavailable (backing off)",
                                              cause="backing_off")
                self._probing = True
                return True
        return False

    def record(self, failed: bool, *, fatal: bool = False, probe: bool = False,
               exc: BaseException | None = None) -> bool:
        """Count a call's outcome; True when this call opened the breaker."""
        now = self.clock()
        with self._lock:
            if probe:
                self._probing = False
                if not failed:
                    self.tripped = False
                    log.warning("database answers again: %s breaker closed", self.name)
                    return False
                return self._open(now, exc, first=False)
            if not failed and not self._calls:
                return False  # the common case: nothing failed lately, nothing to keep
            self._calls.append((now, failed))
            self._failures += failed
            while self._calls and self._calls[0][0] < now - self.window_s:
                self._failures -= self._calls.popleft()[1]
            if not failed or self.tripped:
                if not self._failures:
                    self._calls.clear()
                return False
            if fatal or (len(self._calls) >= self.min_calls
                         and self._failures >= self.failure_rate * len(self._calls)):
                return self._open(now, exc, first=True)
            return False

    def release_probe(self) -> None:
        """The probe did not reach the database: leave the breaker half open."""
        with self._lock:
            self._probing = False

    def _open(self, now: float, exc: BaseException | None, first: bool) -> bool:
        self._down_until = now + self.backoff_s
        was = self.tripped
        self.tripped = True
        self._calls.clear()
        self._failures = 0
        if first and not was:
            detail = str(exc).strip().splitlines()[0] if exc is not None and str(exc) \
                else type(exc).__name__
            log.warning("database unavailable: %s breaker open for %.1fs (%s)", self.name,
                        self.backoff_s, detail)
        return True


# --- the store ---------------------------------------------------------------------------

class Store:
    """Pooled, breaker-guarded access to the serving tables of one database."""

    def __init__(self, dsn: str, statement_timeout_ms: int, *, pool_max: int = POOL_MAX,
                 backoff_s: float = BACKOFF_S, connect_timeout_s: int = CONNECT_TIMEOUT_S,
                 live_ttl_s: float = LIVE_TTL_S) -> None:
        self.dsn = libpq_dsn(dsn)
        self.statement_timeout_ms = statement_timeout_ms
        self.pool_max = pool_max
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.live_ttl_s = live_ttl_s
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_max)
        self._pid = os.getpid()
        self.breakers = {"read": Breaker("read", backoff_s),
                         "write": Breaker("write", backoff_s)}
        self._live: LiveState | None = None
        self._live_expires = 0.0
        # Called with the new LiveState when the served version is seen to change.
        self.on_switch: list[Callable[[LiveState], None]] = []

    # -- breakers and pool --

    @property
    def is_down(self) -> bool:
        """True while the reads' breaker is open (back-off not over, or a probe in flight)."""
        return self.breakers["read"].is_down

    def _drop_idle(self) -> None:
        """Close the idle connections (the server went away: they are dead too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def _connect(self) -> psycopg2.extensions.connection:
        options = (f"-c statement_timeout={int(self.statement_timeout_ms)} -c jit=off "
                   "-c plan_cache_mode=force_generic_plan")
        conn = psycopg2.connect(self.dsn, connect_timeout=self.connect_timeout_s,
                                connection_factory=_Connection,
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
    def connection(self, kind: str = "read") -> Iterator[psycopg2.extensions.connection]:
        """A pooled autocommit connection guarded by the ``kind`` breaker (``read`` or
        ``write``); database failures become DatabaseUnavailable."""
        breaker = self.breakers[kind]
        probe = breaker.admit()
        tried = failed = fatal = False
        error: BaseException | None = None
        try:
            if not self._slots.acquire(timeout=self.connect_timeout_s):
                raise DatabaseUnavailable("no free database connection")
            conn = None
            try:
                try:
                    tried = True
                    conn = self._checkout()
                    yield conn
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    timeout = isinstance(exc, psycopg2.extensions.QueryCanceledError)
                    # Refused, or dropped under the call: the server is gone. Anything
                    # else (a timeout, a deadlock) only counts towards the failure rate.
                    fatal = conn is None or bool(conn.closed) or \
                        isinstance(exc, psycopg2.InterfaceError)
                    if conn is not None and not timeout:
                        _close_quietly(conn)
                    failed, error = True, exc
                    if fatal:
                        self._drop_idle()
                    raise DatabaseUnavailable(
                        "statement timeout" if timeout else "database unavailable",
                        cause="statement_timeout" if timeout else "database_unavailable",
                    ) from exc
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
        finally:
            if tried:
                breaker.record(failed, fatal=fatal, probe=probe, exc=error)
            elif probe:
                breaker.release_probe()  # the database was not tried: the next call probes

    def fetchone(self, sql: str | Statement, params: Any = None) -> tuple | None:
        """One row of ``sql`` (a Statement is prepared on first use per connection)."""
        with self.connection() as conn, conn.cursor() as cur:
            if isinstance(sql, Statement):
                if sql.name not in conn.prepared:
                    cur.execute(f"PREPARE {sql.name} AS {sql.text}")
                    conn.prepared.add(sql.name)
                cur.execute(sql.execute, [params[n] for n in sql.params] or None)
            else:
                cur.execute(sql, params)
            return cur.fetchone()

    def has_lists(self, version: str) -> bool:
        """Whether ``version`` has lists (:data:`HAS_LISTS_SQL`)."""
        row = self.fetchone(HAS_LISTS_SQL, {"version": version})
        return bool(row and row[0])

    def fetchall(self, sql: str, params: Any = None) -> list[tuple]:
        """All rows of ``sql`` (a read, through the reads' breaker)."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    # -- live version --

    def current_state(self) -> LiveState | None:
        """The cached served version, without reading the database."""
        return self._live

    def live_state(self, refresh: bool = False) -> LiveState:
        """The served version and its data_until (cached for ``live_ttl_s``)."""
        state = self._live
        if state is None or refresh or time.monotonic() >= self._live_expires:
            row = self.fetchone(LIVE_STATE)
            state = _resolve(row, self.has_lists)
            previous = self._live
            self._live = state
            ttl = self.live_ttl_s if not state.degraded else min(self.live_ttl_s,
                                                                  DEGRADED_TTL_S)
            self._live_expires = time.monotonic() + ttl
            if previous is None or previous.degraded != state.degraded:
                if state.degraded:
                    log.warning("live version %s has no lists: serving %s",
                                state.live, state.version)
            if previous is not None and previous.version != state.version:
                log.info("served version switched: %s -> %s", previous.version,
                         state.version)
                for listener in self.on_switch:
                    listener(state)
        return state

    def _read(self, sql: Statement, params: dict[str, Any], pin: Pin | None = None
              ) -> tuple[LiveState, tuple] | None:
        """Run a list read against the cached served version, re-reading after a switch.

        Each read's last column (``seen``) is, when the list asked for is absent, whether
        any list of the version is visible to the statement. A prepared statement takes
        its snapshot before it locks its tables: one delayed across a publish can see
        the version's new partitions without their rows. That read is repeated (a new
        statement, a new snapshot) instead of answering "no list". Returns None when no
        version is served (or the served one keeps switching under the read).

        With ``pin`` (an experiment's version), that version is read once instead; None
        when none of its lists is visible any more (retired): the caller reads the live
        version then.
        """
        if pin is not None:
            return self._read_pinned(sql, params, pin)
        state = self.live_state()
        for attempt in range(READ_ATTEMPTS):
            if state.version is None:
                if attempt == 0:
                    state = self.live_state(refresh=True)
                    continue
                return None
            now = dt.datetime.now(dt.UTC)
            since = max(state.data_until or now, now - RECENT_WINDOW)
            row = self.fetchone(sql, {**params, "version": state.version, "since": since,
                                      "recent_max": RECENT_MAX,
                                      "scan_max": RECENT_SCAN_MAX})
            if row is not None and row[0] == state.live and row[-1] is not False:
                return state, row[:-1]
            state = self.live_state(refresh=True)
        return None

    def _read_pinned(self, sql: Statement, params: dict[str, Any], pin: Pin
                     ) -> tuple[LiveState, tuple] | None:
        now = dt.datetime.now(dt.UTC)
        since = max(pin.data_until or now, now - RECENT_WINDOW)
        row = self.fetchone(sql, {**params, "version": pin.version, "since": since,
                                  "recent_max": RECENT_MAX, "scan_max": RECENT_SCAN_MAX})
        if row is None or row[-1] is False:
            return None
        return LiveState(pin.version, pin.data_until, row[0]), row[:-1]

    # -- reads --

    def read_user(self, user_id: int, page_item: int | None = None, fetch: int = 1000,
                  pin: Pin | None = None) -> UserRead | None:
        """The user's precomputed list, recent items and anchors (None: no version).

        ``page_item`` (a product page's item) is the first anchor when given. Only the
        first ``fetch`` items of the list, plus as many as the user has recent items,
        are read: callers pass what a response can use after its exclusions.
        """
        got = self._read(PERSONALIZED, {"user_id": user_id, "anchors": ANCHORS,
                                        "similar_fetch": SIMILAR_FETCH,
                                        "page_item": page_item, "fetch": fetch}, pin)
        if got is None:
            return None
        state, row = got
        _, items, scores, reasons, reason_ids, tail, recent, anchors = row
        return UserRead(
            version=state.version or "",
            items=items,
            scores=scores or [],
            reasons=reasons or [],
            # The arrays' sentinel for a reason without an item is null to clients.
            reason_item_ids=[None if r is None or r == NO_REASON_ITEM else r
                             for r in reason_ids or []],
            history_tail=tail or [],
            recent=recent or [],
            anchors=[Anchor(int(a["item_id"]), a["title"], [int(x) for x in a["items"] or []],
                            [float(x) for x in a["scores"] or []]) for a in anchors or []],
            degraded=state.degraded,
        )

    def read_similar(self, item_id: int | None, user_id: int | None = None,
                     fetch: int = 1000, pin: Pin | None = None) -> ListRead | None:
        """The similar list of ``item_id`` (or of the user's newest item): its first
        ``fetch`` items, plus as many as the user has recent items."""
        if user_id is None:
            got = self._read(ITEM_SIMILAR, {"item_id": item_id, "fetch": fetch}, pin)
        else:
            got = self._read(USER_SIMILAR, {"item_id": item_id, "user_id": user_id,
                                            "fetch": fetch}, pin)
        if got is None:
            return None
        state, row = got
        _, anchor_id, title, known, items, scores, reasons, recent = row
        return ListRead(state.version or "", items, scores or [], reasons or [], recent or [],
                        anchor_id, title, bool(known), degraded=state.degraded)

    def read_trending(self, list_name: str, user_id: int | None = None,
                      category: str | None = None, fill_list: str | None = None,
                      fetch: int = 1000, pin: Pin | None = None) -> ListRead | None:
        """A non-personal list of the served version (with the user's recent items):
        its first ``fetch`` items, plus as many as the user has recent items.

        With ``category``, the list keeps only items of that catalog category and
        ``fill_list`` is returned with it to fill the rest.
        """
        if category is not None:
            got = self._read(TRENDING_FILTERED, {"list_name": list_name,
                                                 "category": category,
                                                 "fill_list": fill_list}, pin)
        elif user_id is None:
            got = self._read(TRENDING, {"list_name": list_name, "fetch": fetch}, pin)
        else:
            got = self._read(USER_TRENDING, {"list_name": list_name, "user_id": user_id,
                                             "fetch": fetch}, pin)
        if got is None:
            return None
        state, row = got
        _, items, scores, reasons, recent = row[:5]
        fill = row[5:8] if len(row) > 5 else (None, None, None)
        return ListRead(state.version or "", items, scores or [], reasons or [], recent or [],
                        fill_items=fill[0], fill_scores=fill[1], fill_reasons=fill[2],
                        degraded=state.degraded)

    def read_preferences(self, user_id: int, fetch: int = 100) -> PreferencesRead | None:
        """The cold-start lists of a user's onboarding preferences (None: no version)."""
        got = self._read(PREFERENCES, {"user_id": user_id, "fetch": fetch})
        if got is None:
            return None
        state, row = got
        _, liked, similar, categories = row
        return PreferencesRead(
            state.version or "", [int(x) for x in liked or []],
            [Anchor(int(a["item_id"]), a["title"], [int(x) for x in a["items"] or []],
                    [float(x) for x in a["scores"] or []]) for a in similar or []],
            [(c["category"], [int(x) for x in c["items"] or []],
              [float(x) for x in c["scores"] or []]) for c in categories or []],
            state.degraded)

    def read_popular(self, version: str | None = None
                     ) -> tuple[str, list[int], list[float]] | None:
        """The 'popular' list of ``version`` (default: the served one); None if absent."""
        if version is None:
            version = self.live_state().version
            if version is None:
                return None
        row = self.fetchone(POPULAR, {"version": version})
        if row is None:
            return None
        return version, [int(i) for i in row[0] or []], [float(x) for x in row[1] or []]

    def read_key(self, prefix: str) -> tuple | None:
        """The api_keys row with this public prefix (serve/apikeys.py), or None."""
        return self.fetchone(LOOKUP_KEY, {"prefix": prefix})

    # -- writes --

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in one transaction on a write connection (the writes' breaker):
        committed when the block ends, rolled back if it raises."""
        with self.connection("write") as conn:
            conn.autocommit = False
            with conn, conn.cursor() as cur:
                yield cur
            conn.autocommit = True

    def insert_events(self, rows: Sequence[tuple]) -> int:
        """Store event rows in one transaction; returns how many were new.

        ``rows`` are (event_id|None, user_id, item_id, event_type, rating, timestamp,
        context_json|None, key_id|None, request_id|None). No DDL: a row whose day has no
        partition is stored in ``interactions_default``. Guarded by the writes' breaker.
        """
        with self.connection("write") as conn:
            conn.autocommit = False
            with conn, conn.cursor() as cur:  # commits, or rolls back on error
                stored = psycopg2.extras.execute_values(
                    cur, INSERT_EVENTS_SQL, rows, template=INSERT_EVENTS_TEMPLATE,
                    page_size=max(len(rows), 1), fetch=True)
            conn.autocommit = True
            return len(stored)


def _resolve(row: tuple | None, has_lists: Callable[[str], bool]) -> LiveState:
    """The served version from a LIVE_STATE_SQL row: live, else previous, else none
    (a version counts when ``has_lists``)."""
    if row is None:
        return LiveState(None, None)
    live, previous, live_until, previous_until = row
    if live is not None and has_lists(live):
        return LiveState(live, live_until, live)
    if previous is not None and has_lists(previous):
        return LiveState(previous, previous_until, live, "previous_version")
    return LiveState(None, None, live, "no_live_version" if live is not None else None)


def _close_quietly(conn: psycopg2.extensions.connection) -> None:
    try:
        conn.close()
    except Exception:  # already broken
        pass
