"""``recs status``: what is live and how fresh it is, in a few lines.

Everything comes from the databases: the live version (``serving_state``, ``model_runs``,
the published choice's gate figures from ``model_run_figures``, its list count), the last
run of each DAG from Airflow's metadata database (``dag_run``; "never run" when it holds
none, or when Airflow's database is not set up), the nearline lag (the oldest event that
arrived after the ``nearline`` watermark, ``pipeline_watermarks``) and the fallback rate as
the database sees it: the share of recently active users without a list in the live
version, whom the reader answers from the popular list. (The reader's own fallback
counters are on its ``/metrics``, ``recs_fallbacks_total{cause}``.)
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

DAGS = ("daily", "nearline", "hourly", "maintenance")
ACTIVE_DAYS = 7  # users with an event in this many days count towards the fallback rate

LIVE_SQL = """
SELECT s.live_version, s.switched_at, m.logical_date, m.data_until, m.n_users, m.n_items,
       m.n_interactions, f.published_choice, f.ndcg_at_10, f.precision_at_10,
       (SELECT count(*) FROM recommendations r WHERE r.model_version = s.live_version)
FROM serving_state s
JOIN model_runs m ON m.model_version = s.live_version
LEFT JOIN model_run_figures f ON f.model_version = s.live_version AND f.is_published_choice
"""

NEARLINE_SQL = """
SELECT w.value, w.updated_at,
       (SELECT min(i.ingested_at) FROM interactions i WHERE i.ingested_at > w.value),
       (SELECT count(*) FROM interactions i WHERE i.ingested_at > w.value)
FROM pipeline_watermarks w WHERE w.name = 'nearline'
"""

FALLBACK_SQL = """
WITH active AS (
    SELECT DISTINCT user_id FROM interactions WHERE "timestamp" >= %(since)s
)
SELECT count(*),
       count(*) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM recommendations r
           WHERE r.model_version = (SELECT live_version FROM serving_state)
             AND r.user_id = a.user_id))
FROM active a
"""

DAG_RUN_SQL = """
SELECT DISTINCT ON (dag_id) dag_id, state, run_type, logical_date, start_date, end_date
FROM dag_run WHERE dag_id = ANY(%s)
ORDER BY dag_id, COALESCE(start_date, run_after) DESC NULLS LAST
"""


@dataclass
class Status:
    """What ``recs status`` prints (times are timezone-aware UTC)."""

    now: dt.datetime
    live: dict[str, Any] | None = None
    dag_runs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    airflow_note: str | None = None  # why no run could be read, if so
    nearline: dict[str, Any] | None = None
    active_users: int = 0
    fallback_users: int = 0


def gather(dsn: str, airflow_dsn: str | None, now: dt.datetime) -> Status:
    """Read the status from the project's database (``dsn``) and Airflow's (``airflow_dsn``;
    None or unreachable: every DAG "never run", with the reason noted)."""
    from core import db

    st = Status(now=now)
    with db.transaction(dsn) as cur:
        cur.execute(LIVE_SQL)
        row = cur.fetchone()
        if row is not None:
            keys = ("version", "switched_at", "logical_date", "data_until", "n_users",
                    "n_items", "n_interactions", "model", "ndcg_at_10", "precision_at_10",
                    "lists")
            st.live = dict(zip(keys, row, strict=True))
        cur.execute(NEARLINE_SQL)
        row = cur.fetchone()
        if row is not None:
            st.nearline = dict(zip(("watermark", "updated_at", "oldest_pending", "pending"),
                                   row, strict=True))
        cur.execute(FALLBACK_SQL, {"since": now - dt.timedelta(days=ACTIVE_DAYS)})
        st.active_users, st.fallback_users = cur.fetchone()
    st.dag_runs = {dag: None for dag in DAGS}
    st.dag_runs.update(_dag_runs(airflow_dsn, st))
    return st


def _dag_runs(airflow_dsn: str | None, st: Status) -> dict[str, dict[str, Any]]:
    if airflow_dsn is None:
        st.airflow_note = "no Airflow metadata database configured"
        return {}
    import psycopg2

    from core.db import libpq_dsn, redact

    try:
        conn = psycopg2.connect(libpq_dsn(airflow_dsn), connect_timeout=5)
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        st.airflow_note = f"Airflow metadata database {redact(airflow_dsn)} unreachable: {first}"
        return {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('dag_run') IS NOT NULL")
            if not cur.fetchone()[0]:
                st.airflow_note = "Airflow metadata database not migrated yet"
                return {}
            cur.execute(DAG_RUN_SQL, (list(DAGS),))
            keys = ("state", "run_type", "logical_date", "start_date", "end_date")
            return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in cur.fetchall()}
    finally:
        conn.close()


def span(now: dt.datetime, then: dt.datetime) -> str:
    """The time from ``then`` to ``now``: ``3 h 12 min``, ``45 s``, ``2 d 0 h 5 min``."""
    s = max(0, int((now - then).total_seconds()))
    if s < 60:
        return f"{s} s"
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    parts = ([f"{d} d"] if d else []) + ([f"{h} h"] if h or d else []) + [f"{rest // 60} min"]
    return " ".join(parts)


def age(now: dt.datetime, then: dt.datetime | None) -> str:
    """``then`` as an age, ``3 h 12 min ago``; ``-`` when unknown."""
    return "-" if then is None else f"{span(now, then)} ago"


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def render(st: Status) -> str:
    """The lines ``recs status`` prints."""
    out = []
    if st.live is None:
        out.append("live version: none (nothing published yet: recs pipeline)")
    else:
        lv = st.live
        out.append(f"live version: {lv['version']} (day {lv['logical_date']}), published "
                   f"{_when(lv['switched_at'])}, {age(st.now, lv['switched_at'])}")
        out.append(f"  data until {_when(lv['data_until'])} "
                   f"({age(st.now, lv['data_until'])}); trained on {lv['n_users'] or 0} users, "
                   f"{lv['n_items'] or 0} items, {lv['n_interactions'] or 0} interactions; "
                   f"lists for {lv['lists']} users")
        if lv["model"]:
            out.append(f"  published model: {lv['model']}, NDCG@10 {lv['ndcg_at_10']:.4f}, "
                       f"precision@10 {lv['precision_at_10']:.4f} (the gate's held-out users)")
    out.append("last DAG runs:" + (f" ({st.airflow_note})" if st.airflow_note else ""))
    for dag in DAGS:
        run = st.dag_runs.get(dag)
        if run is None:
            out.append(f"  {dag:<12} never run")
            continue
        out.append(f"  {dag:<12} {run['state']:<8} {run['run_type']}, logical date "
                   f"{_when(run['logical_date'])}, started {age(st.now, run['start_date'])}"
                   + (f", ended {age(st.now, run['end_date'])}" if run["end_date"] else ""))
    nl = st.nearline
    if nl is None:
        out.append("nearline: never run")
    else:
        lag = "0 s (no event waiting)" if nl["oldest_pending"] is None else \
            f"{span(st.now, nl['oldest_pending'])} ({nl['pending']} events waiting)"
        out.append(f"nearline: lag {lag}; watermark {_when(nl['watermark'])}, last run "
                   f"{age(st.now, nl['updated_at'])}")
    if st.active_users:
        rate = st.fallback_users / st.active_users
        out.append(f"fallback rate: {rate:.1%} ({st.fallback_users} of {st.active_users} "
                   f"users active in the last {ACTIVE_DAYS} days have no list in the live "
                   "version and get popular items)")
    else:
        out.append(f"fallback rate: - (no user active in the last {ACTIVE_DAYS} days)")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace, s) -> int:
    from cli.airflow_env import metadata_conn

    st = gather(s.dsn, metadata_conn(s), dt.datetime.now(dt.UTC))
    print(render(st))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``recs status`` to the ``recs`` parser's subcommands."""
    sub.add_parser("status", help="the live version, its age and figures, the last run of "
                   "each DAG, the nearline lag and the fallback rate").set_defaults(
        func=cmd_status)
