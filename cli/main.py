"""``recs``: the operators' command line over the project's jobs, server and Airflow.

Each subcommand parses its arguments and calls a typed function; errors from bad input
print one line naming the problem (and the file and line where there is one) and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core import settings as settings_mod
from core.settings import PROJECT_ROOT, SettingsError

log = logging.getLogger("recs")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --- prerequisites -------------------------------------------------------------------

def check_prerequisites(need_pg_server: bool) -> list[str]:
    """Problems with the machine (Java 17, Postgres server binaries), as advice lines."""
    problems = []
    java = shutil.which("java")
    if java is None:
        problems.append("Java 17 runtime not found (Spark needs it): "
                        "apt-get install openjdk-17-jre-headless")
    else:
        out = subprocess.run([java, "-version"], capture_output=True, text=True)
        text = out.stderr + out.stdout
        version = text.split('"')[1] if '"' in text else ""
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if major < 17:
            problems.append(f"Java {version or '?'} found, Spark 4 needs 17 or newer: "
                            "apt-get install openjdk-17-jre-headless")
    if need_pg_server:
        from core import localpg

        for name in ("initdb", "pg_ctl"):
            try:
                localpg.find_bin(name)
            except localpg.LocalPgError:
                problems.append(f"Postgres server binary {name} not found: "
                                "apt-get install postgresql (or set RECS_DATABASE_URL)")
                break
    return problems


def cmd_check(args, s) -> int:
    problems = check_prerequisites(s.uses_private_pg)
    for p in problems:
        print(f"missing: {p}", file=sys.stderr)
    blas = any(Path(d, "libblas.so.3").exists() for d in
               ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"))
    if not blas:
        print("note: no native BLAS (libblas.so.3); Spark ALS runs about 1.25x slower. "
              "Install: apt-get install libopenblas0-pthread", file=sys.stderr)
    if problems:
        return 1
    print("ok: Java and Postgres binaries found")
    return 0


# --- database --------------------------------------------------------------------------

def db_up(s) -> str:
    """Start the private Postgres when no URL is configured; apply migrations."""
    from core import localpg, migrate

    if s.uses_private_pg:
        localpg.start(s)
    applied = migrate.apply(s.dsn)
    ensure_airflow_database(s)
    from core.db import redact

    where = f" (roles and passwords: {s.pg_dir / 'pgpass'})" if s.uses_private_pg else ""
    return (f"database ready at {redact(s.dsn)} ({len(applied)} migrations applied now)"
            f"{where}")


def ensure_airflow_database(s) -> bool:
    """Create the database ``airflow`` next to the project's when Airflow's metadata is to
    live there (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN unset). Returns True when that is
    where it lives; False when the environment names another database (the user's
    choice, created by its administrator: nothing is created)."""
    import psycopg2
    import psycopg2.extensions

    from cli.airflow_env import metadata_conn, metadata_url
    from core.db import libpq_dsn

    if metadata_conn(s) != metadata_url(s):
        return False
    conn = psycopg2.connect(libpq_dsn(s.dsn))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
            if cur.fetchone() is None:
                try:
                    cur.execute("CREATE DATABASE airflow")
                except psycopg2.errors.InsufficientPrivilege:
                    raise CliError(
                        "the user of RECS_DATABASE_URL may not create the database "
                        "'airflow' for Airflow's metadata: set "
                        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN to a database Airflow may "
                        "use (docs/operations.md, \"Your own Postgres\"), or have an "
                        "administrator create 'airflow' owned by that user") from None
    finally:
        conn.close()
    return True


def cmd_db_up(args, s) -> int:
    print(db_up(s))
    return 0


def cmd_db_down(args, s) -> int:
    from core import localpg

    if not s.uses_private_pg:
        raise CliError("RECS_DATABASE_URL is set: the project does not manage that server")
    localpg.stop(s)
    print("private Postgres stopped")
    return 0


def cmd_migrate(args, s) -> int:
    from core import migrate

    applied = migrate.apply(s.dsn)
    print(f"applied: {', '.join(applied) or 'nothing new'}")
    return 0


def cmd_db_init(args, s) -> int:
    """The schema, the roles' grants and Airflow's metadata on a server the project does
    not manage; re-runnable. What the user of RECS_DATABASE_URL needs is in
    docs/operations.md, "Your own Postgres"."""
    import psycopg2

    from cli.airflow_env import metadata_conn
    from core import migrate
    from core.db import redact

    ours = ensure_airflow_database(s)
    try:
        applied = migrate.apply(s.dsn)
    except (migrate.MigrationError, psycopg2.Error) as exc:
        raise CliError(f"{str(exc).strip()}\n(what the user of RECS_DATABASE_URL needs: "
                       "docs/operations.md, \"Your own Postgres\")") from None
    print(f"applied: {', '.join(applied) or 'nothing new'}")
    for line in enable_role_logins(s):
        print(line)
    airflow_db_ready(s)  # fails here, not in the first pipeline run, if Airflow cannot
    print(f"Airflow metadata ready in {redact(metadata_conn(s))}"
          f"{'' if ours else ' (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)'}")
    return 0


def enable_role_logins(s) -> list[str]:
    """On a server the project does not manage: give recs_reader / recs_analyst the login
    and password that RECS_READER_DATABASE_URL / RECS_ANALYST_DATABASE_URL carry (the
    URL the reader will connect with), connected as RECS_DATABASE_URL's user, who must
    be allowed to alter roles. Only the password's SCRAM verifier reaches the server;
    nothing secret is printed. Returns what was done, as lines."""
    from urllib.parse import unquote, urlsplit

    import psycopg2
    from psycopg2.extensions import encrypt_password

    from core.db import libpq_dsn
    from core.settings import ANALYST_ROLE, READER_ROLE

    wanted = []
    for role, url in ((READER_ROLE, s.reader_database_url),
                      (ANALYST_ROLE, s.analyst_database_url)):
        parts = urlsplit(libpq_dsn(url)) if url else None
        if parts and parts.username == role and parts.password:
            wanted.append((role, unquote(parts.password)))
    if not wanted or s.uses_private_pg:
        return []
    done = []
    conn = psycopg2.connect(libpq_dsn(s.dsn))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role, password in wanted:
                verifier = encrypt_password(password, role, conn, "scram-sha-256")
                try:
                    cur.execute(f"ALTER ROLE {role} LOGIN PASSWORD %s", (verifier,))
                except psycopg2.errors.InsufficientPrivilege as exc:
                    raise CliError(f"cannot give {role} a login as the user of "
                                   f"RECS_DATABASE_URL ({exc.pgerror.strip()}); an "
                                   f"administrator runs ALTER ROLE {role} LOGIN PASSWORD "
                                   "...") from None
                done.append(f"{role}: login enabled with the password of its URL")
    finally:
        conn.close()
    return done


def cmd_maintenance(args, s) -> int:
    """Partition maintenance once (what dags/maintenance.py runs hourly)."""
    from jobs import maintenance

    out = maintenance.run(progress=lambda line: print(line, flush=True))
    return 1 if out["kept_by_lock"] else 0


# --- data ------------------------------------------------------------------------------

IMPORT_KINDS = ("events", "items", "users")


def cmd_load(args, s) -> int:
    from jobs.ingest import load as loader

    if args.source in IMPORT_KINDS:
        return cmd_import(args, s)
    if args.path is not None or args.map:
        raise CliError(f"recs load {args.source}: PATH and --map are for "
                       f"`recs load {'|'.join(IMPORT_KINDS)} PATH`")
    if args.source == "synthetic":
        from jobs.ingest.synthetic import shape_config

        sizes = {"n_users": args.users, "n_items": args.items, "n_events": args.events,
                 "n_days": args.days, "seed": args.seed}  # given ones override the shape
        cfg = shape_config(args.shape, **{k: v for k, v in sizes.items() if v is not None})
        report = loader.load_synthetic(cfg, dsn=s.dsn)
    else:
        path = Path(args.source)
        if not path.is_dir():
            raise CliError(f"{path}: not a folder (expected a MovieLens dataset folder "
                           "or 'synthetic')")
        report = loader.load_movielens(path, dsn=s.dsn, skip_bad=args.skip_bad)
    print(report_line(report))
    return 0


def cmd_import(args, s) -> int:
    """``recs load events|items|users PATH``: jobs/ingest/generic.py, with progress."""
    from cli.load_progress import LoadProgress
    from jobs.ingest import generic

    if args.path is None:
        raise CliError(f"recs load {args.source} PATH: give the file or folder to load")
    try:
        mapping = generic.parse_map(args.map or [], args.source)
    except generic.ImportSpecError as exc:
        raise CliError(str(exc)) from None
    bar = LoadProgress(sys.stderr)
    try:
        report = generic.load(args.source, Path(args.path), dsn=s.dsn, mapping=mapping,
                              skip_bad=args.skip_bad, progress=bar)
    except generic.ImportSpecError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    print(import_line(report))
    return 0


def import_line(report) -> str:
    """One line: what a ``recs load events|items|users`` did."""
    what = {"events": "events stored", "items": "items new or changed",
            "users": "users new or changed"}[report.kind]
    line = (f"{report.kind}: {report.rows} rows read, {report.written} written "
            f"({what}) from {report.files_loaded} of {report.files} files"
            f" in {report.seconds:.1f}s ({report.rows_per_s:,.0f} rows/s)")
    if report.files_already:
        line += f"; {report.files_already} files already loaded, skipped"
    if report.mapped_ids:
        line += f"; {report.mapped_ids} new external ids mapped"
    if report.skipped:
        line += f"; skipped {report.skipped} bad rows: " + "; ".join(report.skipped_reasons[:3])
    return line


def report_line(report) -> str:
    if report.already_loaded:
        return f"{report.source}: already loaded (digest {report.digest[:12]}), nothing written"
    line = (f"{report.source}: {report.interactions} interactions, {report.users} users, "
            f"{report.items} items in {report.seconds:.1f}s")
    if report.skipped:
        line += f"; skipped {report.skipped} bad rows: " + "; ".join(report.skipped_reasons[:3])
    return line


def newest_event_day(s) -> dt.date:
    from core import db

    with db.transaction(s.dsn) as cur:
        cur.execute('SELECT max("timestamp") FROM interactions')
        (ts,) = cur.fetchone()
    if ts is None:
        raise CliError("no interactions loaded: run `recs load` first")
    return ts.astimezone(dt.UTC).date()


# --- pipeline ----------------------------------------------------------------------------

def airflow(s, *argv: str, check: bool = True, capture: bool = False):
    from cli.airflow_env import environ

    env = environ(s)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "airflow"), *argv]
    r = subprocess.run(cmd, env=env, text=True, capture_output=capture)
    if check and r.returncode != 0:
        tail = (r.stderr or "")[-3000:] if capture else ""
        raise CliError(f"airflow {' '.join(argv)} failed with status {r.returncode}\n{tail}")
    return r


def airflow_db_ready(s) -> None:
    """Migrate Airflow's metadata database once per Airflow version and database (the
    marker is keyed by the database's URL, and a database without Airflow's tables is
    migrated whatever the marker says)."""
    from cli.airflow_env import metadata_migrated, migration_marker

    if metadata_migrated(s):
        return
    ensure_airflow_database(s)
    airflow(s, "db", "migrate", capture=True)
    marker = migration_marker(s)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(dt.datetime.now(dt.UTC).isoformat())


def run_daily(s, day: dt.date, inline: bool = False) -> dict:
    """Run the daily pipeline for ``day`` through Airflow (or in-process with inline),
    printing progress; the run's ``model_runs`` row, or ``failure`` when it failed."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    result: dict = {"day": day, "status": None, "message": None, "metrics": {}}
    if inline:
        result.update(_run_inline(day, t0))
    else:
        result.update(_run_through_airflow(s, day, started))
    if result.get("failure") is None:
        result.update(_model_run(s, result["version"]))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _run_inline(day: dt.date, t0: float) -> dict:
    """``jobs.daily.run_all`` in this process, with a start and an end line."""
    from cli.progress import format_line
    from jobs import daily

    print(format_line(0.0, "daily", "running"), flush=True)
    try:
        out = {"version": daily.run_all(day)["version"], "failure": None}
    except Exception as exc:
        log.exception("the in-process daily run failed")
        out = {"version": None, "failure": f"the in-process run raised {exc!r}"}
    seconds = time.perf_counter() - t0
    state = "failed" if out["failure"] else "success"
    print(format_line(seconds, "daily", state, seconds), flush=True)
    return out


def _run_through_airflow(s, day: dt.date, started: dt.datetime) -> dict:
    """``airflow dags test daily`` for ``day``, its tasks' progress printed meanwhile."""
    from cli.airflow_env import metadata_url
    from cli.progress import RunWatcher
    from core.db import libpq_dsn
    from jobs.configs import digest
    from jobs.evaluate import model_version

    airflow_db_ready(s)
    # The run whose data interval is [day, day + 1).
    logical = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    argv = ("dags", "test", "daily", logical.date().isoformat())
    watcher = RunWatcher(libpq_dsn(metadata_url(s)), "daily", logical_date=logical,
                         started=started)
    with watcher:
        rc = airflow(s, *argv, check=False).returncode
    failure = None
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        failure = f"`airflow {' '.join(argv)}` {how}"
        if watcher.tracker.failed():
            failure += f" (failed tasks: {', '.join(watcher.tracker.failed())})"
    return {"version": model_version(day, digest(s)), "failure": failure}


def _model_run(s, version: str) -> dict:
    """Status, message and metrics of ``version`` in ``model_runs`` (status None: none)."""
    from core import db

    with db.transaction(s.dsn) as cur:
        cur.execute("SELECT status, message, metrics FROM model_runs WHERE model_version = %s",
                    (version,))
        row = cur.fetchone()
    if row is None:
        return {"status": None}
    return {"status": row[0], "message": row[1], "metrics": row[2] or {}}


def pipeline_exit(result: dict) -> tuple[int, str | None]:
    """Exit status of ``recs pipeline`` and its closing line: 0 only when published,
    3 when the gate rejected the version, 1 for anything else."""
    version, status, message = result.get("version"), result["status"], result["message"]
    if result.get("failure"):
        return 1, f"recs: the daily run for {result['day']} failed: {result['failure']}"
    if status == "published":
        return 0, None
    if status == "rejected":
        return 3, f"nothing was published: the gate rejected {version}: {message}"
    if status == "evaluated" and (message or "").startswith("not live:"):
        # A backfill older than the live version (jobs/publish.py): checked, not loaded.
        return 3, f"nothing was published: {version} is {message}"
    if status is None:
        return 1, (f"recs: the daily run for {result['day']} recorded no model run "
                   f"{version}; nothing was published")
    return 1, f"recs: {version} ended {status} ({message}); nothing was published"


def summary_lines(result: dict) -> list[str]:
    """The recorded outcome: status line, the gate's figures, the published model."""
    if result["status"] is None:
        return []
    metrics = result["metrics"]
    lines = [f"{result['version']}: {result['status']} - {result['message']} in "
             f"{result['seconds']}s"]
    for name in ("full_pipeline", "ranker", "als", "two_tower", "popularity"):
        if isinstance(metrics.get(name), dict):
            m = metrics[name]
            lines.append(f"  {name:<14} NDCG@10 {m.get('ndcg@10', float('nan')):.4f}  "
                         f"precision@10 {m.get('precision@10', float('nan')):.4f}")
    model = metrics.get("published_model")
    if model:
        label = ("published model" if result["status"] == "published"
                 else "model the gate judged (not published)")
        lines.append(f"{label}: {published_model_text(model)}")
    return lines


def published_model_text(value) -> str:
    """``name (NDCG@10 0.4300): reason`` from ``metrics["published_model"]``."""
    if not isinstance(value, dict):
        return str(value)
    text = str(value.get("name", "?"))
    if isinstance(value.get("ndcg@10"), int | float):
        text += f" (NDCG@10 {value['ndcg@10']:.4f})"
    if value.get("reason"):
        text += f": {value['reason']}"
    return text


def cmd_pipeline(args, s) -> int:
    day = dt.date.fromisoformat(args.date) if args.date else newest_event_day(s)
    print(f"running the daily pipeline for {day} "
          f"({'in process' if args.inline else 'through Airflow'})", flush=True)
    result = run_daily(s, day, inline=args.inline)
    for line in summary_lines(result):
        print(line)
    code, closing = pipeline_exit(result)
    if closing:
        print(closing, file=sys.stdout if code == 3 else sys.stderr, flush=True)
    return code


def cmd_airflow(args, s) -> int:
    airflow_db_ready(s)
    return airflow(s, *args.args, check=False).returncode


def cmd_airflow_ui(args, s) -> int:
    from cli import airflow_ui

    airflow_db_ready(s)
    return airflow_ui.serve(s, port=args.port, host=args.host) or 0


# --- serving --------------------------------------------------------------------------

def _pidfile(s) -> Path:
    return s.home / "reader.pid"


def stop_reader(s) -> bool:
    """Stop a reader started with ``recs serve --daemon``; True if one was running."""
    import signal

    pidfile = _pidfile(s)
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (ValueError, ProcessLookupError):
        pidfile.unlink(missing_ok=True)
        return False
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return True


def cmd_serve(args, s) -> int:
    env = dict(os.environ, RECS_SERVE_BIND=args.bind)
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "-c",
           str(PROJECT_ROOT / "serve" / "gunicorn.conf.py"), "serve.app:create_app()"]
    if not args.daemon:
        os.execve(cmd[0], cmd, env)
    import urllib.request

    stop_reader(s)
    s.home.mkdir(parents=True, exist_ok=True)
    log_path = s.home / "reader.log"
    subprocess.run([*cmd, "--daemon", "--pid", str(_pidfile(s)), "--error-logfile",
                    str(log_path)], env=env, check=True)
    url = f"http://{args.bind}/healthz"
    for _ in range(100):
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    print(f"reader running at http://{args.bind} (log {log_path}; "
                          "stop with `recs stop`)")
                    return 0
        except OSError:
            time.sleep(0.2)
    raise CliError(f"reader did not answer {url}; see {log_path}")


def cmd_stop(args, s) -> int:
    print("reader stopped" if stop_reader(s) else "no reader was running")
    return 0


def _has_key(cur, name: str) -> bool:
    cur.execute("SELECT 1 FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,))
    return cur.fetchone() is not None


def cmd_examples(args, s) -> int:
    """Print curl commands for a real user and item of the live version."""
    from core import db

    with db.transaction(s.dsn) as cur:
        cur.execute("""SELECT r.user_id, r.items[1] FROM serving_state st
                       JOIN recommendations r ON r.model_version = st.live_version
                       ORDER BY r.user_id LIMIT 1""")
        row = cur.fetchone()
    if row is None:
        raise CliError("no live version yet: run `recs pipeline` first")
    user, item = row
    from serve import apikeys

    with db.transaction(s.dsn) as cur:  # fresh keys: reads need one by default
        keys = {}
        for name, scope in (("demo-read", "read"), ("demo", "events")):
            if _has_key(cur, name):
                apikeys.revoke(cur, name)
            _, keys[scope] = apikeys.create(cur, name, (scope,))
    read, events = keys["read"], keys["events"]
    base = f"http://{args.bind}/api/v1"
    print("API keys for these examples (shown once; `recs keys revoke demo-read` and "
          "`recs keys revoke demo` end them):")
    print(f"  read:   {read}")
    print(f"  events: {events}")
    print("Try:")
    print(f"  curl -s -H 'X-API-Key: {read}' '{base}/recommendations/{user}?limit=5'")
    print(f"  curl -s -H 'X-API-Key: {read}' '{base}/similar/{item}?limit=5'")
    print(f"  curl -s -X POST {base}/events -H 'Content-Type: application/json' "
          f"-H 'X-API-Key: {events}' "
          f"-d '{{\"user_id\": {user}, \"item_id\": {item}, \"event_type\": \"view\", "
          f"\"timestamp\": \"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\"}}'")
    print(f"  curl -s -H 'X-API-Key: {read}' "
          f"'{base}/recommendations/{user}?type=trending&limit=5'")
    return 0


# --- evaluation -------------------------------------------------------------------------

def cmd_evaluate(args, s) -> int:
    from jobs import protocol, report

    data = Path(args.data)  # not a MovieLens folder: the loader's ValueError names it
    table = protocol.run(data, split=args.split, settings=s)
    print(protocol.format_table(table))
    out = Path(args.out) if args.out else s.home / "reports" / f"{data.name}-{args.split}"
    paths = report.write(protocol.report_table(table), out)
    (out / "evaluation.json").write_text(json.dumps(table, indent=2))
    print("written:", ", ".join([*paths.values(), str(out / "evaluation.json")]))
    return 0


# --- parser ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("check", help="check Java 17, Postgres binaries and BLAS").set_defaults(
        func=cmd_check)
    sub.add_parser("db-up", help="start the private Postgres (if no URL) and migrate"
                   ).set_defaults(func=cmd_db_up)
    sub.add_parser("db-down", help="stop the private Postgres").set_defaults(func=cmd_db_down)
    sub.add_parser("db-init", help="migrate and create the airflow database (servers "
                   "not managed by the project)").set_defaults(func=cmd_db_init)
    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        func=cmd_migrate)
    sub.add_parser("maintenance", help="interactions partitions: create ahead, empty the "
                   "default partition, retention (RECS_RETENTION_DAYS)").set_defaults(
        func=cmd_maintenance)

    load = sub.add_parser("load", help="load events, items or users of your own "
                          "(CSV, Parquet, JSON Lines), a MovieLens folder or synthetic data")
    load.add_argument("source", help="events, items or users (then PATH), a MovieLens "
                      "folder (ml-latest-small, ml-100k, ml-1m layouts) or 'synthetic'")
    load.add_argument("path", nargs="?", help="with events|items|users: a file or a folder "
                      "of .csv, .parquet, .jsonl/.ndjson files (.gz allowed on text); the "
                      "schema is in docs/data.md")
    load.add_argument("--map", action="append", metavar="COLUMN=FILE_COLUMN",
                      help="read a schema column from a differently named file column, "
                      "e.g. --map user_id=customer_id (repeatable)")
    load.add_argument("--skip-bad", action="store_true",
                      help="count and report bad rows instead of stopping")
    # Synthetic sizes left out take the shape's values; given ones override them.
    load.add_argument("--users", type=int, help="default 1000 (coldstart: 2500)")
    load.add_argument("--items", type=int, help="default 500")
    load.add_argument("--events", type=int, help="default 50000")
    load.add_argument("--days", type=int, help="default 30")
    load.add_argument("--seed", type=int, help="default 42")
    load.add_argument("--shape", default="default",
                      help="synthetic data shape: default, popular, longtail, sequential, "
                      "coldstart or drift (see jobs/ingest/synthetic.py SHAPES)")
    load.set_defaults(func=cmd_load)

    pipe = sub.add_parser("pipeline", help="run the daily DAG once (through Airflow)")
    pipe.add_argument("--date", help="logical day YYYY-MM-DD (default: day of the newest "
                      "event, so historical data works)")
    pipe.add_argument("--inline", action="store_true",
                      help="run the same steps in this process instead of through Airflow")
    pipe.set_defaults(func=cmd_pipeline)

    serve = sub.add_parser("serve", help="run the reader under gunicorn")
    serve.add_argument("--bind", default=os.environ.get("RECS_SERVE_BIND", "127.0.0.1:8000"))
    serve.add_argument("--daemon", action="store_true",
                       help="run in the background (pid in var/reader.pid) and return")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("stop", help="stop a reader started with --daemon").set_defaults(
        func=cmd_stop)
    ex = sub.add_parser("examples", help="print curl commands that work on the live data")
    ex.add_argument("--bind", default=os.environ.get("RECS_SERVE_BIND", "127.0.0.1:8000"))
    ex.set_defaults(func=cmd_examples)

    ev = sub.add_parser("evaluate", help="benchmark protocol on a dataset folder, with the "
                                         "daily DAG's settings (RECS_* variables)")
    ev.add_argument("--data", required=True, help="MovieLens folder")
    ev.add_argument("--split", choices=["stratified", "time", "chrono"], default="stratified",
                    help="stratified (the protocol), time (global cut) or chrono (each "
                         "user's newest pairs)")
    ev.add_argument("--out", help="folder for the table (.md, .csv, .png, .json); default "
                                  "var/reports/<dataset>-<split>")
    ev.set_defaults(func=cmd_evaluate)

    af = sub.add_parser("airflow", help="run an airflow command with the project's settings")
    af.add_argument("args", nargs=argparse.REMAINDER)
    af.set_defaults(func=cmd_airflow)

    ui = sub.add_parser("airflow-ui", help="start Airflow (standalone) with the project's "
                        "DAGs; prints the URL and how to log in")
    ui.add_argument("--port", type=int, default=8080)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=cmd_airflow_ui)
    from cli import experiments, keys, status
    experiments.register(sub)
    keys.register(sub)
    status.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("RECS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        s = settings_mod.get()
        return args.func(args, s)
    except (CliError, SettingsError) as exc:
        print(f"recs: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: loaders name the file and line (BadRowError is a ValueError).
        print(f"recs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
