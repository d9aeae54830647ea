"""Airflow for operators: the UI, scheduler, dag-processor and triggerer in one command.

:func:`serve` (``recs airflow-ui``, ``make airflow``) starts ``airflow standalone`` with
the project's DAGs (daily, nearline, hourly, maintenance) and its metadata in the
project's Postgres (database ``airflow``), waits until the UI answers, prints the URL and
how to log in, and runs until interrupted. :func:`start` does the same in the background
and returns a handle (the tests drive the UI through it).

Login: the simple auth manager's user ``admin``; its generated password is written to
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` (``var/airflow/``, made
0600 here) on the first start and kept afterwards. The banner names that file and never
prints the password.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

USERNAME = "admin"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


class AirflowUIError(RuntimeError):
    """Airflow did not start (the message names the log to read)."""


@dataclass
class AirflowUI:
    """A running ``airflow standalone``."""

    url: str
    username: str
    password: str
    password_file: Path
    home: Path
    log_path: Path
    process: subprocess.Popen

    def token(self) -> str:
        """A JWT for the REST API (``Authorization: Bearer ...``)."""
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["access_token"]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop standalone, its components and their tasks: SIGTERM to the process group
        it leads (every component shuts down on SIGTERM), SIGKILL what is left after
        ``timeout``."""
        pgid = self.process.pid  # started with start_new_session: it leads its group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=15)


def _secret(home: Path, name: str) -> str:
    """A random secret kept in AIRFLOW_HOME, the same for every component and restart."""
    path = home / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


def environ(s: Settings, port: int, host: str = "127.0.0.1",
            base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``airflow standalone`` for the project (set values win)."""
    from cli.airflow_env import environ as airflow_environ

    env = airflow_environ(s, base)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    public = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    defaults = {
        # The tasks read the project's settings from RECS_* like any worker.
        "RECS_HOME": str(s.home),
        "RECS_PG_PORT": str(s.pg_port),
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{public}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{public}:{port}/execution/",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, ".jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(home, ".api_secret_key"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # One machine: a few task slots (the LocalExecutor starts one process per slot).
        "AIRFLOW__CORE__PARALLELISM": "8",
        "PYTHONUNBUFFERED": "1",  # standalone relays its components' output line by line
    }
    if s.database_url:
        defaults["RECS_DATABASE_URL"] = s.database_url
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as resp:
            health = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor")
    return all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start(s: Settings, port: int = 8080, host: str = "127.0.0.1",
          base_env: dict[str, str] | None = None, timeout: float = 300.0,
          prepare_database: bool = True) -> AirflowUI:
    """Start ``airflow standalone`` in the background and wait until it is healthy.

    ``prepare_database``: start the private Postgres (when no URL is set), apply the
    project's migrations and create the ``airflow`` database first.
    """
    if prepare_database:
        from cli.main import db_up

        db_up(s)
    if not _port_free(host, port):
        raise AirflowUIError(f"port {port} on {host} is in use: choose another with --port")
    env = environ(s, port, host, base_env)
    home = Path(env["AIRFLOW_HOME"])
    log_path = home / "standalone.log"
    url = env["AIRFLOW__API__BASE_URL"].rstrip("/")
    airflow = str(Path(sys.executable).parent / "airflow")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([airflow, "standalone"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=home)
    password_file = Path(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
                                 home / PASSWORD_FILE))
    deadline = time.monotonic() + timeout
    handle = AirflowUI(url, USERNAME, "", password_file, home, log_path, proc)
    while True:
        if proc.poll() is not None:
            raise AirflowUIError(f"airflow standalone exited with status {proc.returncode}; "
                                 f"see {log_path}:\n{_tail(log_path)}")
        if password_file.exists() and _healthy(url):
            passwords = json.loads(password_file.read_text() or "{}")
            if USERNAME in passwords:
                password_file.chmod(0o600)  # whatever mode Airflow wrote it with
                handle.password = passwords[USERNAME]
                return handle
        if time.monotonic() > deadline:
            handle.stop()
            raise AirflowUIError(f"Airflow not healthy at {url} after {timeout:.0f}s; "
                                 f"see {log_path}:\n{_tail(log_path)}")
        time.sleep(1.0)


def banner(ui: AirflowUI, s: Settings) -> str:
    """What an operator needs: URL, login, where things are."""
    from cli.airflow_env import metadata_url
    from core.db import redact

    return "\n".join([
        f"Airflow UI: {ui.url}",
        f"  log in as {ui.username!r}; the password is in {ui.password_file} "
        "(readable by you only; it is never printed)",
        f"  DAGs: daily, nearline, hourly, maintenance (from dags/); "
        f"metadata: {redact(metadata_url(s))}",
        f"  log: {ui.log_path}",
        "Stop with Ctrl-C.",
    ])


def serve(s: Settings, port: int = 8080, host: str = "127.0.0.1") -> int:
    """Start Airflow for operators, print the URL and login, run until interrupted."""
    print(f"starting Airflow (api-server, scheduler, dag-processor, triggerer) on "
          f"{host}:{port} ...", flush=True)
    ui = start(s, port=port, host=host)
    print(banner(ui, s), flush=True)
    try:
        return ui.process.wait()
    except KeyboardInterrupt:
        print("stopping Airflow ...", flush=True)
        ui.stop()
        return 0
