"""Reader load: latency at a fixed rate and the highest sustained rate, on loopback.

Against the live version of the configured database (run `make pipeline` first):
personalized requests for random users, each excluding three of its own list's items.
The reference, measured in the same run under the same gunicorn settings, is a bare Flask
JSON route (bench/bare_app.py).

- fixed rate: an open-loop generator sends requests on a fixed schedule; a request's
  latency counts from its scheduled time, so a stall is not hidden (no coordinated
  omission).
- highest sustained rate: wrk (Debian package `wrk`) with 16 connections for 10 s, or a
  Python closed loop when wrk is missing.

    .venv/bin/python -m bench.reader_load [--rate 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import Gunicorn, percentiles
from core import db
from core import settings as settings_mod


def request_paths(n_users: int = 500, seed: int = 42) -> list[str]:
    with db.transaction() as cur:
        cur.execute("""SELECT r.user_id, r.items[1:10] FROM serving_state s
                       JOIN recommendations r ON r.model_version = s.live_version
                       ORDER BY r.user_id LIMIT %s""", (n_users,))
        rows = cur.fetchall()
    if not rows:
        raise SystemExit("no live version: run `make pipeline` (or recs pipeline) first")
    rng = random.Random(seed)
    paths = []
    for user, items in rows:
        excl = ",".join(str(i) for i in rng.sample(list(items), min(3, len(items))))
        paths.append(f"/api/v1/recommendations/{user}?limit=20&exclude={excl}")
    return paths


def fixed_rate(base: str, paths: list[str], rate: float, seconds: float,
               threads: int = 32) -> dict:
    local = threading.local()
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(path: str, scheduled: float) -> None:
        nonlocal errors
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        try:
            ok = session.get(base + path, timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        done = time.perf_counter()
        with lock:
            latencies.append(done - scheduled)
            errors += 0 if ok else 1

    n = int(rate * seconds)
    rng = random.Random(7)
    start = time.perf_counter() + 0.2
    with ThreadPoolExecutor(threads) as pool:
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, rng.choice(paths), scheduled)
    elapsed = time.perf_counter() - start
    return {"rate": rate, "sent": n, "errors": errors,
            "achieved_rps": round(n / elapsed, 1), **percentiles(latencies)}


def max_rate(base: str, paths: list[str], seconds: int = 10, connections: int = 16) -> dict:
    wrk = shutil.which("wrk")
    if wrk:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write("paths = {" + ",".join(json.dumps(p) for p in paths) + "}\n"
                     "request = function() return wrk.format('GET', "
                     "paths[math.random(#paths)]) end\n")
            script = fh.name
        out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", script, base], capture_output=True, text=True).stdout
        Path(script).unlink()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        return {"tool": "wrk", "rps": rps, "non_2xx": int(non2xx.group(1)) if non2xx else 0}
    count = 0
    stop = time.perf_counter() + seconds

    def loop() -> None:
        nonlocal count
        s = requests.Session()
        rng = random.Random()
        while time.perf_counter() < stop:
            s.get(base + rng.choice(paths), timeout=5)
            count += 1

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"tool": "python closed loop", "rps": round(count / seconds, 1), "non_2xx": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    s = settings_mod.get()
    paths = request_paths()
    bare_paths = [f"/bare/{i}" for i in range(500)]
    result = {"database": s.dsn}
    with Gunicorn("bench.bare_app:create_app()") as bare:
        result["bare_fixed"] = fixed_rate(bare.base, bare_paths, args.rate, args.seconds)
        result["bare_max"] = max_rate(bare.base, bare_paths)
    with Gunicorn("serve.app:create_app()") as reader:
        for path in paths[:50]:  # warm the pools and the popular list
            requests.get(reader.base + path, timeout=5)
        result["reader_fixed"] = fixed_rate(reader.base, paths, args.rate, args.seconds)
        result["reader_max"] = max_rate(reader.base, paths)
    result["max_rate_ratio_reader_over_bare"] = round(
        result["reader_max"]["rps"] / result["bare_max"]["rps"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
