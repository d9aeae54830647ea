"""docs/tutorial.md, run as written: every ```bash block in order, in one bash process
(so that variables such as KEY carry from one block to the next), with `set -euo
pipefail`, in the checkout's root as the tutorial says.

Isolation, as tests/test_demo_flow.py: a scratch RECS_HOME with its own private Postgres
on a free port (RECS_PG_PORT), the reader on a free port (RECS_SERVE_BIND), Spark on
local[2]; the tutorial reads these variables where a reader would use the defaults. The
`recs` on PATH runs this checkout's code (the venv's console script may belong to
another checkout of the shared venv).

Not run, and so marked in the tutorial (`<!-- tutorial-test: not run (...) -->`): the
clone and set-up (this test runs in the checkout under test and puts its `recs` on PATH
itself), the Airflow UI (it stays in the foreground for a browser;
tests/test_airflow_ui.py drives it in headless Chromium), and section 9's placeholders
for one's own servers (tests/test_own_servers.py runs those commands against a second
Postgres server).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.spark,
              pytest.mark.slow]

TUTORIAL = PROJECT_ROOT / "docs" / "tutorial.md"
DATA = PROJECT_ROOT / "docs" / "tutorial"
SKIP = re.compile(r"<!-- tutorial-test: not run \((?P<why>[^)]*)\) -->\s*$")
BLOCK = re.compile(r"^```bash\n(?P<body>.*?)^```\n", re.S | re.M)
MARK = "##### tutorial block "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bash_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, body, why it is not run or None) of every ```bash block, in order."""
    out = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append((line, m.group("body"), skip.group("why") if skip else None))
    return out


def recs_shim(bin_dir: Path) -> None:
    """`recs` running this checkout's cli.main with the venv's interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "recs"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    shim.chmod(0o755)


def test_blocks_are_found_and_only_the_marked_ones_skipped():
    blocks = bash_blocks(TUTORIAL.read_text())
    skipped = [why for _, _, why in blocks if why]
    assert skipped == ["clone and set-up", "the Airflow UI, for a browser",
                       "placeholders: tests/test_own_servers.py runs these commands "
                       "against a second Postgres server"]
    run = "\n".join(body for _, body, why in blocks if not why)
    for needed in ("recs db-up", "recs load items docs/tutorial/items.csv",
                   "recs load events docs/tutorial/events.csv", "recs pipeline",
                   "recs keys create tutorial-read --scope read", "curl",
                   "-U recs_analyst", "recs db-down"):
        assert needed in run, needed
    assert any("recs airflow-ui" in body for _, body, why in blocks if why)


def test_example_data_is_the_scripts_output(tmp_path):
    r = subprocess.run([sys.executable, str(DATA / "make_data.py"), str(tmp_path)],
                       capture_output=True, text=True, check=True)
    assert "120 items, 150 users, 1637 events" in r.stdout
    for name in ("items.csv", "users.csv", "events.csv"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


@pytest.fixture
def scratch():
    home = Path(tempfile.mkdtemp(prefix="recs-tutorial-"))
    os.chmod(home, 0o755)  # the postgres user must reach pg/ when tests run as root
    recs_shim(home / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RECS_", "AIRFLOW", "PG"))}
    env.update(RECS_HOME=str(home / "var"), RECS_PG_PORT=str(free_port()),
               RECS_SERVE_BIND=f"127.0.0.1:{free_port()}", RECS_SPARK_MASTER="local[2]",
               RECS_LOG_LEVEL="WARNING", PYTHONPATH=str(PROJECT_ROOT),
               PATH=f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    yield home, env
    for argv in (["stop"], ["db-down"]):  # whatever the script reached
        subprocess.run([str(home / "bin" / "recs"), *argv], env=env, cwd=PROJECT_ROOT,
                       capture_output=True, timeout=120)
    shutil.rmtree(home, ignore_errors=True)


def test_tutorial_runs_as_written(scratch):
    home, env = scratch
    parts = ["set -euo pipefail"]
    for line, body, why in bash_blocks(TUTORIAL.read_text()):
        if why is None:
            parts += [f"echo '{MARK}{line}'", body]
    script = home / "tutorial.sh"
    script.write_text("\n".join(parts) + "\necho '##### tutorial done'\n")
    r = subprocess.run(["bash", str(script)], env=env, cwd=PROJECT_ROOT, text=True,
                       capture_output=True, timeout=1200)
    out = r.stdout
    reached = re.findall(MARK + r"(\d+)", out)[-1:]
    assert r.returncode == 0 and out.rstrip().endswith("##### tutorial done"), (
        f"the tutorial stopped (status {r.returncode}) in the block at line {reached}\n"
        f"{out[-4000:]}\n{r.stderr[-6000:]}")
    by_block = dict(re.findall(rf"^{MARK}(\d+)\n(.*?)(?=^#####)", out, re.S | re.M))
    text = "\n".join(by_block.values())
    assert "published" in text, out
    # The curl answers: the client's ids in and out, personalised, not the fallback.
    answers = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    recs, similar = answers[0], answers[1]
    assert recs["user_id"] == "user_42" and recs["fallback"] is False
    assert len(recs["recommendations"]) == 5
    assert all(x["item_id"].startswith("item_") for x in recs["recommendations"])
    assert all(x["item_id"].startswith("item_") for x in similar["recommendations"])
    # The analyst's query printed five rows of titles.
    table = re.search(r"category \|\s+title\s+\|\s+in_top_5_of_users\s*\n.*?\((\d+) rows\)",
                      text, re.S)
    assert table and table.group(1) == "5", text[-3000:]
    assert "private Postgres stopped" in text
