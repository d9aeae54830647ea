"""Reader latency with experiment routing and the exposure log on against off, in one run.

    .venv/bin/python -m bench.experiments_load [--rate 300] [--seconds 20] [--rounds 3]

One database (bench/load.py's seeded synthetic version, with session items) holding one
running A/B experiment over every user: control (the live lists) against a treatment that
pins a version (the same one: the pinned read path, not a different list, is measured).
Two gunicorn readers (serve/gunicorn.conf.py) serve it side by side: ``on`` (the
defaults: routing, 1% holdout, exploration 0.05 of the top 5, exposure log) and ``off``
(``RECS_EXPERIMENTS_ENABLED=0``). wrk drives personalized requests at a fixed rate
(bench/load.py's paced Lua script) to one reader at a time, alternating off/on for
``--rounds`` rounds so that drift of the shared machine hits both alike.

Exposures: the ``on`` reader's ``recs_exposures_total`` counters (served, logged,
dropped) after its last run, the rows in ``exposures`` after it is stopped (worker exit
flushes what is queued), and the requests wrk saw answered.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import requests

from bench.common import Gunicorn
from bench.load import (
    VERSION,
    _with_db,
    add_session_items,
    drop_database,
    fresh_database,
    lua_script,
    publish_synthetic,
    run_wrk,
    scenario_paths,
)
from core import db, localpg, migrate
from core import settings as settings_mod
from serve import apikeys

DB_NAME = "recs_load_experiments"


def exposure_counters(base: str) -> dict[str, float]:
    text = requests.get(base + "/metrics", timeout=5).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^recs_exposures_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def count_rows(dsn: str) -> tuple[int, dict[str, int]]:
    with db.transaction(dsn) as cur:
        cur.execute("SELECT count(*) FROM exposures")
        total = cur.fetchone()[0]
        cur.execute("SELECT coalesce(variant, '(none)'), count(*) FROM exposures GROUP BY 1")
        return total, dict(cur.fetchall())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--seconds", type=float, default=20, help="length of one fixed-rate run")
    p.add_argument("--rounds", type=int, default=3, help="off/on pairs of runs")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--list-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--on-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra setting of the 'on' reader (diagnosis), e.g. "
                        "RECS_EXPOSURE_QUEUE_MAX=1 to drop nearly every exposure")
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    s = settings_mod.get()
    if s.uses_private_pg:
        localpg.start(s)
    result: dict = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                    "args": {k: v for k, v in vars(args).items() if k != "out"}}
    dsn = fresh_database(s, DB_NAME)
    migrate.apply(dsn)
    print("building the synthetic version...", flush=True)
    result["data"] = publish_synthetic(dsn, args.users, args.items, args.list_k, 50,
                                       args.seed)
    paths, users, _, max_item = scenario_paths(dsn, args.seed)
    result["data"]["session_events"] = add_session_items(dsn, users, max_item, args.seed)
    variants = [{"key": "control", "weight": 0.5, "changes": {}},
                {"key": "treatment", "weight": 0.5, "changes": {"model_version": VERSION}}]
    with db.transaction(dsn) as cur:
        _, key = apikeys.create(cur, "bench-experiments", ["read"])
        cur.execute("INSERT INTO experiments (experiment_key, variants, status) "
                    "VALUES ('bench-ab', %s, 'running')", (json.dumps(variants),))
    lake = tempfile.mkdtemp(prefix="recs-exp-load-lake-")
    env = {"RECS_DATABASE_URL": dsn, "RECS_LAKE_ROOT": lake, "RECS_KEY_RATE_PER_S": "0"}
    if s.uses_private_pg:  # the reader's own role (INSERT on exposures only)
        env["RECS_READER_DATABASE_URL"] = _with_db(s.reader_dsn, DB_NAME)
    conns = max(16, min(64, int(args.rate // 10)))
    personalized = paths["personalized"]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    sent_on = 0
    try:
        on_env = {**env, **dict(x.split("=", 1) for x in args.on_env)}
        with Gunicorn("serve.app:create_app()", {**env, "RECS_EXPERIMENTS_ENABLED": "0"}
                      ) as off, Gunicorn("serve.app:create_app()", on_env) as on:
            readers = {"off": off, "on": on}
            for reader in readers.values():  # pools, popular lists, caches
                for path in personalized[:200]:
                    requests.get(reader.base + path, headers={"X-API-Key": key}, timeout=5)
            sent_on += 200
            script = lua_script("personalized", personalized, key=key, rate=args.rate,
                                seed=args.seed)
            for r in range(args.rounds):
                for name in ("off", "on"):
                    got = run_wrk(readers[name].base, script, args.seconds, conns)
                    runs[name].append(got)
                    if name == "on":
                        sent_on += got["requests"]
                    print(f"  round {r + 1} {name}: p50 {got['p50_ms']} ms, p99 "
                          f"{got['p99_ms']} ms, {got['rps']} req/s, late {got['late_slots']}"
                          f", errors {got['errors']}", flush=True)
            time.sleep(2.5)  # the last batch (flush_s 0.5) and the metrics files (1 s)
            result["counters_before_stop"] = exposure_counters(on.base)
        # Both readers stopped: the workers flushed what was still queued.
        rows, by_variant = count_rows(dsn)
        result["exposure_rows"] = rows
        result["exposure_rows_by_variant"] = by_variant
        result["requests_answered_on"] = sent_on
    finally:
        shutil.rmtree(lake, ignore_errors=True)
        if not args.keep:
            drop_database(s, DB_NAME)
    for name, got in runs.items():
        result[name] = {
            "runs": got,
            "p50_ms_median": statistics.median(g["p50_ms"] for g in got),
            "p99_ms_median": statistics.median(g["p99_ms"] for g in got),
            "p99_ms_each": [g["p99_ms"] for g in got],
            "errors": sum(g["errors"] for g in got),
            "late_slots": sum(g["late_slots"] for g in got),
        }
    result["p99_on_minus_off_ms"] = round(result["on"]["p99_ms_median"]
                                          - result["off"]["p99_ms_median"], 2)
    c = result["counters_before_stop"]
    result["served_equals_logged_plus_dropped"] = (
        c.get("served", 0) == c.get("logged", 0) + c.get("dropped", 0))
    result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
