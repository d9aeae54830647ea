"""`make pipeline` end to end on a dataset, with the time of every stage.

Runs the operator's steps in a fresh home with its own Postgres (so nothing of the demo is
touched): db-up, load, and the daily DAG through Airflow. The per-task times come from
Airflow's own metadata (task_instance.duration), the other steps are timed here.

    .venv/bin/python -m bench.pipeline_stages [--data ../shared/data/ml-latest-small]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from bench.common import free_port
from core.settings import PROJECT_ROOT

RECS = str(Path(sys.executable).parent / "recs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--keep", action="store_true", help="keep the scratch home")
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="recs-bench-pipeline-"))
    os.chmod(home, 0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECS_", "AIRFLOW"))}
    env.update(RECS_HOME=str(home), RECS_PG_PORT=str(port), RECS_LOG_LEVEL="WARNING")
    data = str(Path(args.data).resolve()) if args.data != "synthetic" else "synthetic"
    steps = {}

    def step(name: str, *argv: str) -> str:
        t0 = time.perf_counter()
        r = subprocess.run([RECS, *argv], env=env, cwd=PROJECT_ROOT, capture_output=True,
                           text=True)
        steps[name] = round(time.perf_counter() - t0, 1)
        if r.returncode != 0:
            raise SystemExit(f"recs {' '.join(argv)} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
        return r.stdout

    try:
        total = time.perf_counter()
        step("db-up (initdb, start, migrate)", "db-up")
        step("load", "load", data)
        out = step("daily DAG through Airflow (incl. airflow db migrate)", "pipeline")
        steps["total"] = round(time.perf_counter() - total, 1)
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="recs_pipeline",
                                dbname="airflow", passfile=str(home / "pg" / "pgpass"))
        with conn, conn.cursor() as cur:
            cur.execute("""SELECT task_id, round(duration::numeric, 1) FROM task_instance
                           WHERE dag_id = 'daily' ORDER BY start_date""")
            tasks = {t: float(d) for t, d in cur.fetchall()}
        conn.close()
        print(json.dumps({"data": data, "steps_s": steps, "airflow_tasks_s": tasks,
                          "result": out.strip().splitlines()[-1]}, indent=2))
    finally:
        subprocess.run([RECS, "stop"], env=env, capture_output=True)
        subprocess.run([RECS, "db-down"], env=env, capture_output=True)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
