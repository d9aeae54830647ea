"""Prometheus metrics of the reader, summed over gunicorn's worker processes.

Each worker counts in memory (a dict under a lock: a few microseconds a request). Under
gunicorn the master creates a folder (``RECS_METRICS_DIR``, see serve/gunicorn.conf.py)
and each worker writes its counts there as ``<pid>.json`` every second and at exit;
``GET /metrics`` answers the sum of every file in the folder, with the answering worker's
own counts taken live. Files of workers that exited stay, so counters never go down
while the server runs (the folder is removed when gunicorn stops). Without the folder
(tests, ``flask run``) the counts are the process's own.

Metrics:

- ``recs_http_requests_total{endpoint,method,status}``
- ``recs_http_request_duration_seconds{endpoint}`` (histogram)
- ``recs_fallbacks_total{endpoint,cause}``: answers not made of the live version's
  requested list; cause is ``database_unavailable``, ``statement_timeout``,
  ``backing_off``, ``database_error``, ``previous_version``, ``no_live_version``,
  ``missing_list``, ``experiment_version_gone`` or ``experiment_variant_missing``
- ``recs_events_total{outcome}``: ``stored``, ``duplicate``, ``rejected``, ``unavailable``
- ``recs_exposures_total{outcome}``: lists put on the exposure log (``served``), written
  (``logged``), lost (``dropped``: queue full or a failed batch); see serve/exposures.py.
  A served list whose experiment version is no longer kept counts in
  ``recs_fallbacks_total`` with cause ``experiment_version_gone``
- ``recs_auth_failures_total{reason}``: ``missing``, ``invalid``, ``revoked``, ``scope``
- ``recs_rate_limited_total{scope}``: requests refused (429) for their key's rate
- ``recs_live_version_published_timestamp_seconds``: when the live version was switched in
  (``serving_state.switched_at``, Unix seconds); the publish age is ``time() - it``
- ``recs_live_data_until_timestamp_seconds``: the end of the live version's data (the
  newest events its lists saw); both gauges are read from the database when scraped and
  left out while it is unreachable or no version is live

Every label value comes from a fixed set, never from the request as sent: ``endpoint`` is
the matched route's pattern (``unmatched`` otherwise), ``method`` one of
:data:`METHODS` or ``other`` (any ``method`` label is mapped so when recorded), ``status``
a code the app answered, the others names chosen by the code. So no request adds series.
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DUMP_EVERY_S = 1.0
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})

HELP = {
    "recs_http_requests_total": ("counter", "HTTP requests answered"),
    "recs_http_request_duration_seconds": ("histogram",
                                           "Time from request start to response, seconds"),
    "recs_fallbacks_total": ("counter", "Read answers not from the live version's list"),
    "recs_events_total": ("counter", "Posted events by outcome"),
    "recs_exposures_total": ("counter", "Served lists on the exposure log by outcome"),
    "recs_auth_failures_total": ("counter", "Requests refused for their API key"),
    "recs_rate_limited_total": ("counter", "Requests refused (429) for their API key's rate"),
    "recs_live_version_published_timestamp_seconds": (
        "gauge", "When the live version was switched in, Unix seconds"),
    "recs_live_data_until_timestamp_seconds": (
        "gauge", "End of the live version's data (newest events its lists saw), Unix seconds"),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Counters and histograms of one process."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {}
        # (name, labels) -> [bucket counts..., +Inf count, sum]
        self._hists: dict[tuple[str, Labels], list[float]] = {}
        self.directory = Path(directory) if directory else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- recording --

    @staticmethod
    def method_label(method: str) -> str:
        """The ``method`` label of a request: a standard method, else ``other``."""
        return method if method in METHODS else "other"

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if "method" in labels:
            labels["method"] = self.method_label(labels["method"])
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        if "method" in labels:
            labels["method"] = self.method_label(labels["method"])
        key = (name, tuple(sorted(labels.items())))
        i = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            h = self._hists.get(key)
            if h is None:
                h = self._hists[key] = [0.0] * (len(BUCKETS) + 2)
            h[i] += 1
            h[-1] += seconds

    def snapshot(self) -> dict:
        with self._lock:
            return {"counters": [[n, list(map(list, lb)), v]
                                 for (n, lb), v in self._counters.items()],
                    "hists": [[n, list(map(list, lb)), list(h)]
                              for (n, lb), h in self._hists.items()]}

    # -- sharing between workers --

    def start(self) -> None:
        """Write this process's counts to the shared folder every second (if any)."""
        if self.directory is None or self._thread is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="recs-metrics", daemon=True)
        self._thread.start()
        atexit.register(self.dump)

    def _loop(self) -> None:
        while not self._stop.wait(DUMP_EVERY_S):
            self.dump()

    def dump(self) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot()))
            os.replace(tmp, path)
        except OSError as exc:  # the folder went away (server stopping)
            log.debug("metrics dump failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()

    def _all_snapshots(self) -> Iterable[dict]:
        yield self.snapshot()
        if self.directory is None:
            return
        own = f"{os.getpid()}.json"
        try:
            files = sorted(p for p in self.directory.glob("*.json") if p.name != own)
        except OSError:
            return
        for path in files:
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue

    # -- exposition --

    def render(self, gauges: dict[str, float] | None = None) -> str:
        """Prometheus text format (0.0.4), summed over all workers' snapshots; ``gauges``
        (name -> value, the same for every worker) are written as they are."""
        gauges = gauges or {}
        counters: dict[tuple[str, Labels], float] = {}
        hists: dict[tuple[str, Labels], list[float]] = {}
        for snap in self._all_snapshots():
            for name, labels, value in snap.get("counters", []):
                key = (name, tuple(tuple(x) for x in labels))
                counters[key] = counters.get(key, 0.0) + value
            for name, labels, h in snap.get("hists", []):
                key = (name, tuple(tuple(x) for x in labels))
                acc = hists.setdefault(key, [0.0] * (len(BUCKETS) + 2))
                for i, v in enumerate(h):
                    acc[i] += v
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "gauge":
                if name in gauges:
                    lines.append(f"{name} {_num(gauges[name])}")
            elif kind == "counter":
                for (n, labels), value in sorted(counters.items()):
                    if n == name:
                        lines.append(f"{name}{_fmt(labels)} {_num(value)}")
            else:
                for (n, labels), h in sorted(hists.items()):
                    if n != name:
                        continue
                    cumulative = 0.0
                    for bound, count in zip(BUCKETS, h, strict=False):
                        cumulative += count
                        lines.append(f"{name}_bucket{_fmt(labels, le=_num(bound))} "
                                     f"{_num(cumulative)}")
                    cumulative += h[len(BUCKETS)]
                    lines.append(f"{name}_bucket{_fmt(labels, le='+Inf')} {_num(cumulative)}")
                    lines.append(f"{name}_sum{_fmt(labels)} {h[-1]!r}")
                    lines.append(f"{name}_count{_fmt(labels)} {_num(cumulative)}")
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(labels: Labels, **extra: str) -> str:
    items = list(labels) + list(extra.items())
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in items) + "}"
