"""The Airflow UI as an operator uses it, in a real browser.

Airflow starts the way `make airflow` starts it (cli/airflow_ui.py: `airflow standalone`
with the project's DAGs, its metadata in the project's Postgres), in a private home with
its own Postgres and small synthetic data. Headless Chromium (Debian's package, driven by
Playwright) logs in, sees the daily, nearline and hourly DAGs with no import errors,
triggers `daily` for the logical date 2026-11-01 (data interval [2026-10-31, 2026-11-01):
the synthetic data's newest day) from the trigger dialog, which also unpauses it, waits for
the run to succeed and saves a screenshot of it.

The scheduler runs with `use_job_schedule = False`, so that unpausing creates no scheduled
run beside the triggered one (it still runs triggered runs and backfills).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from core import settings as settings_mod
from core.settings import PROJECT_ROOT

pytestmark = [pytest.mark.airflow, pytest.mark.integration, pytest.mark.spark,
              pytest.mark.slow, pytest.mark.browser]

RECS = str(Path(sys.executable).parent / "recs")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = PROJECT_ROOT / "var" / "test" / "screenshots"
LOGICAL_DATE = "2026/11/01"  # the run covering 2026-10-31, the data's newest day
RUN_BUDGET_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """A private home: Postgres, synthetic data and Airflow started for operators."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None):
        self.home = home
        self.pg_port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RECS_", "AIRFLOW"))}
        self.env.update(RECS_HOME=str(home), RECS_PG_PORT=str(self.pg_port),
                        RECS_ALS_RANK="16", RECS_ALS_REG="0.3", RECS_LOG_LEVEL="WARNING",
                        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False", **(extra_env or {}))
        self.dsn = f"postgresql://recs@127.0.0.1:{self.pg_port}/recs"
        self.ui = None

    def recs(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        r = subprocess.run([RECS, *args], env=self.env, text=True, capture_output=True,
                           timeout=timeout, cwd=PROJECT_ROOT)
        if r.returncode != 0:
            raise AssertionError(f"recs {' '.join(args)} -> {r.returncode}\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
        return r

    def start(self, users: int, items: int, events: int, days: int) -> None:
        from cli import airflow_ui

        self.recs("db-up")
        self.recs("load", "synthetic", "--users", str(users), "--items", str(items),
                  "--events", str(events), "--days", str(days))
        s = settings_mod.load(env=self.env)
        self.ui = airflow_ui.start(s, port=free_port(), base_env=self.env,
                                   prepare_database=False)

    def stop(self) -> None:
        if self.ui is not None:
            self.ui.stop()
        subprocess.run([RECS, "db-down"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.home, ignore_errors=True)

    def api(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.ui.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.ui.token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def sql(self, query: str, params=()):
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None

    def wait_for_runs(self, dag_id: str, run_ids: list[str], budget_s: float) -> dict:
        """Poll until every run has finished; return run_id -> state."""
        deadline = time.monotonic() + budget_s
        while True:
            states = {}
            for run_id in run_ids:
                run = self.api(f"/api/v2/dags/{dag_id}/dagRuns/"
                               f"{urllib.parse.quote(run_id, safe='')}")
                states[run_id] = run["state"]
            if all(s in ("success", "failed") for s in states.values()):
                return states
            if time.monotonic() > deadline:
                tis = self.api(f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances")
                raise AssertionError(f"runs not finished after {budget_s}s: {states}; tasks: "
                                     + str([(t["dag_run_id"], t["task_id"], t["state"])
                                            for t in tis["task_instances"]])
                                     + f"\nlog: {self.ui.log_path}")
            time.sleep(5)


@pytest.fixture(scope="module")
def site():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    pytest.importorskip("playwright.sync_api")
    home = Path(tempfile.mkdtemp(prefix="recs-ui-"))
    os.chmod(home, 0o755)  # the postgres user must reach var/pg when tests run as root
    s = Site(home)
    try:
        s.start(users=300, items=150, events=20000, days=20)
        yield s
    finally:
        s.stop()


def test_operator_logs_in_sees_the_dags_and_runs_daily(site, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ui = site.ui
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            # Log in.
            page.goto(f"{ui.url}/auth/login")
            page.fill("input[name=username]", ui.username)
            page.fill("input[name=password]", ui.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
            # The four DAGs, no import errors.
            page.goto(f"{ui.url}/dags")
            for dag_id in ("daily", "nearline", "hourly", "maintenance"):
                link = page.locator(f'a[data-testid="dag-id"][href="/dags/{dag_id}"]')
                expect(link).to_have_text(dag_id)
            expect(page.get_by_text("5 Dags")).to_be_visible()
            assert page.get_by_text("Import Error").count() == 0
            assert site.api("/api/v2/importErrors")["total_entries"] == 0
            page.screenshot(path=str(tmp_path / "dags.png"))
            # Trigger daily for the data's newest day; the dialog unpauses it.
            page.goto(f"{ui.url}/dags/daily")
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog").first
            expect(dialog.get_by_text("Unpause daily on trigger")).to_be_visible()
            assert dialog.get_by_role("checkbox").is_checked()
            page.get_by_test_id("datetime-input").click()
            page.get_by_placeholder("YYYY/MM/DD").fill(LOGICAL_DATE)
            page.get_by_placeholder("HH:mm").fill("00:00")
            page.keyboard.press("Escape")  # closes the date picker, not the dialog
            expect(page.get_by_test_id("datetime-input")).to_have_text("Nov 01, 2026 00:00")
            with page.expect_response(lambda r: r.url.endswith("/dags/daily/dagRuns")
                                      and r.request.method == "POST") as posted:
                page.get_by_role("dialog").first.get_by_role("button", name="Trigger").click()
            run = posted.value.json()
            assert run["data_interval_start"] == "2026-10-31T00:00:00Z"
            assert run["data_interval_end"] == "2026-11-01T00:00:00Z"
            assert site.api("/api/v2/dags/daily")["is_paused"] is False
            # Wait for success, then look at the run in the UI.
            states = site.wait_for_runs("daily", [run["dag_run_id"]], RUN_BUDGET_S)
            assert states[run["dag_run_id"]] == "success", states
            run_url = f"{ui.url}/dags/daily/runs/{urllib.parse.quote(run['dag_run_id'])}"
            page.goto(run_url)
            expect(page.get_by_text("success").first).to_be_visible()
            expect(page.get_by_text("publish").first).to_be_visible()
            page.wait_for_timeout(1500)  # let the grid finish drawing
            shot = tmp_path / "daily-run.png"
            page.screenshot(path=str(shot), full_page=True)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, SCREENSHOTS / "airflow-daily-run.png")
            shutil.copy(tmp_path / "dags.png", SCREENSHOTS / "airflow-dags.png")
        finally:
            browser.close()
    # The run published the lists of 2026-10-31.
    live, day, status = site.sql("SELECT r.model_version, r.logical_date, r.status "
                                 "FROM serving_state s JOIN model_runs r "
                                 "ON r.model_version = s.live_version")[0]
    assert str(day) == "2026-10-31" and status == "published", (live, day, status)
    tis = site.api(f"/api/v2/dags/daily/dagRuns/"
                   f"{urllib.parse.quote(run['dag_run_id'], safe='')}/taskInstances")
    assert {t["task_id"]: t["state"] for t in tis["task_instances"]}["publish"] == "success"
