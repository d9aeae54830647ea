"""Parse the project's DAG folder the way the dag-processor does, in a subprocess with
its own AIRFLOW_HOME, and return what the DAG tests check (shared by the DAG tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import PROJECT_ROOT

PARSE = r"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags), "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "timetable": type(dag.timetable).__name__,
        "timetable_args": {
            "delta": dag.timetable.delta.total_seconds()
                     if hasattr(dag.timetable, "delta") else None,
            "expression": getattr(dag.timetable, "expression", None)},
        "tasks": {t.task_id: {"downstream": sorted(t.downstream_task_ids),
                              "retries": t.retries, "type": type(t).__name__,
                              "conn_id": getattr(t, "_conn_id", None),
                              "timeout": t.execution_timeout.total_seconds()
                                         if t.execution_timeout else None}
                  for t in dag.tasks},
    }
print("RESULT" + json.dumps(out))
"""


def parse(tmp_path: Path, **env: str) -> dict:
    home = tmp_path / "airflow_home"
    home.mkdir(exist_ok=True)
    full = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db", **env)
    code = f"DAGS = {str(PROJECT_ROOT / 'dags')!r}\n" + PARSE
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=full, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert line, r.stderr[-3000:]
    return json.loads(line[-1][len("RESULT"):])
