"""A Spark standalone cluster on this machine for tests: one master, two workers.

Started from the pyspark package's own ``spark-class`` (the same Spark as the driver).
Each worker has one core, its own work folder and its own temporary folders
(``SPARK_LOCAL_DIRS``, ``java.io.tmpdir``), so that nothing but the paths the jobs are
given (the lake) is shared between executors and driver, as on machines of their own.
Executors run this interpreter (``PYSPARK_PYTHON``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

WORKERS = 2
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Cluster:
    url: str  # spark://127.0.0.1:<port>
    webui: str  # http://127.0.0.1:<port>
    pids: tuple[int, ...]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def alive_workers(webui: str) -> int:
    """Workers the master lists as ALIVE (its JSON status page); 0 while it is not up."""
    try:
        with urllib.request.urlopen(f"{webui}/json/", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def _env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    opts = f"-Djava.io.tmpdir={tmp}"
    env = {**os.environ, "SPARK_LOCAL_DIRS": str(tmp), "SPARK_DAEMON_JAVA_OPTS": opts,
           "SPARK_WORKER_OPTS": opts, "PYSPARK_PYTHON": sys.executable, "TMPDIR": str(tmp),
           "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp / "logs"),
           "SPARK_NO_DAEMONIZE": "1"}
    env.pop("SPARK_HOME", None)
    return env


def group_members(pgids: set[int]) -> list[str]:
    """``ps`` lines of the processes still in one of the process groups ``pgids``."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True,
                         check=True).stdout
    return [line.strip() for line in out.splitlines()
            if len(line.split()) > 2 and int(line.split()[1]) in pgids]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop each daemon's process group (spark-class execs java; the executors a worker
    starts and their Python workers are in its group), then wait for it; raise if a
    process of those groups is left."""
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    pgids = {proc.pid for proc in procs}
    deadline = time.monotonic() + 30
    while (left := group_members(pgids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        raise RuntimeError(f"Spark processes left after the cluster stopped: {left}")


@contextmanager
def standalone(base: Path, workers: int = WORKERS, cores: int = 1,
               memory: str = "2g") -> Iterator[Cluster]:
    """Start a master and ``workers`` workers under ``base``; yield when every worker has
    registered; stop all of them on exit."""
    port, webui_port = free_port(), free_port()
    url, webui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{webui_port}"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, argv: list[str]) -> None:
        log = open(base / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([str(spark_class()), *argv], env=_env(base / name),
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    base.mkdir(parents=True, exist_ok=True)
    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(port), "--webui-port", str(webui_port)])
        for n in range(workers):
            work = base / f"worker{n}" / "work"
            work.mkdir(parents=True)
            start(f"worker{n}", ["org.apache.spark.deploy.worker.Worker", "-c", str(cores),
                                 "-m", memory, "--host", "127.0.0.1",
                                 "--webui-port", str(free_port()), "--work-dir", str(work),
                                 url])
        deadline = time.monotonic() + START_TIMEOUT_S
        while alive_workers(webui) < workers:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(f"{p.name}: {p.read_text()[-1500:]}"
                                  for p in sorted(base.glob("*.log")))
                raise RuntimeError(f"Spark standalone cluster did not start "
                                   f"(exited: {dead}):\n{tails}")
            time.sleep(0.5)
        yield Cluster(url, webui, tuple(p.pid for p in procs))
    finally:
        _stop(procs)
        for log in logs:
            log.close()
