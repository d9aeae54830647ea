"""Helpers shared by the benchmarks: free ports, gunicorn processes, percentiles."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from core.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def emit(result: dict, out: str | None) -> None:
    """Print a benchmark's result as JSON, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """gunicorn with the reader's configuration, serving ``app`` on a free port."""

    def __init__(self, app: str, env: dict[str, str] | None = None,
                 extra: list[str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), "RECS_SERVE_BIND": f"127.0.0.1:{self.port}"}
        self.app = app
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Gunicorn:
        self.proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(PROJECT_ROOT / "serve" / "gunicorn.conf.py"),
             *self.extra, self.app], env=self.env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.base + "/healthz", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn {self.app} did not start")

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    a = np.asarray(latencies_s) * 1000.0
    if len(a) == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


class ScratchHome:
    """A fresh ``RECS_HOME`` with its own private Postgres on a free port: ``recs(...)``
    runs the command line there; on exit the database stops and the home is removed
    (unless ``keep``)."""

    def __init__(self, prefix: str, keep: bool = False):
        self.home = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self.home, 0o755)
        port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RECS_", "AIRFLOW"))}
        self.env.update(RECS_HOME=str(self.home), RECS_PG_PORT=str(port),
                        RECS_LOG_LEVEL="WARNING")
        # The pipeline's role; its password is in the home's private pgpass (0600).
        self.dsn = (f"postgresql://recs_pipeline@127.0.0.1:{port}/recs"
                    f"?passfile={self.home / 'pg' / 'pgpass'}")
        self.keep = keep

    def recs(self, *argv: str) -> subprocess.CompletedProcess:
        r = subprocess.run([str(BIN / "recs"), *argv], env=self.env, cwd=PROJECT_ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"recs {' '.join(argv)} failed ({r.returncode}):\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return r

    def use(self) -> None:
        """Point this process's settings at the scratch home (for in-process jobs)."""
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("RECS_")})

    def __enter__(self) -> ScratchHome:
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([str(BIN / "recs"), "db-down"], env=self.env, capture_output=True)
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)
