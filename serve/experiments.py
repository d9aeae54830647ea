"""Experiment routing in the reader: the running experiments, cached per process.

The definitions (``experiments``, ``experiment_overrides``: sql/012_experiments.sql) and
which of the versions their variants name are still kept (the version's
``recommendations`` partition holds a row) are read at most once per ``ttl_s`` per
process, lazily, by the first request after that (the others use the current set
meanwhile), never once per request; while the database cannot be read the last set is
kept. A definition that fails ``models.assignment.validate`` (or overlaps an accepted one
in its layer) is left out and logged, so one bad row cannot stop the others.

Per request, :meth:`ExperimentSet.route` calls ``models.assignment.assign`` (GrowthBook
hash v2, layers, the global holdout, QA overrides): pure compute over the cached set.
A user may be in one experiment per layer. The response and the exposure log name one of
them, the *primary*: the assignment of the first layer in name order. The variants'
``changes`` are merged over the layers in the same order (the first layer naming a key
wins). The reader honours these keys (the others, e.g. ranker or re-ranking settings,
are precompute settings: a variant that changes them names the ``model_version`` its
precompute published):

- ``model_version``: serve that version's lists (when it is still kept; otherwise the
  live version, counted as ``recs_fallbacks_total{cause="experiment_version_gone"}``);
- ``precompute``: the variant has its own lists, computed by jobs/variants.py for its
  users as a *variant version* of the live version; the refresh finds it (``model_runs``
  of kind ``variant`` whose base is the live version) and the variant is served it as
  its ``model_version``, the similar and trending types from the live version
  (``catalog_version``). Until the variant version of the live version exists the
  variant is served the live lists, counted as ``cause="experiment_variant_missing"``;
- ``blend`` (bool): false serves the precomputed list without "Because you watched X";
- ``exploration_rate`` (0..1): this variant's exploration rate instead of the setting.

An experiment of kind ``interleaving`` as the primary (assigned by hash) serves one
team-draft interleaved list of all its variants' lists; an override of it serves the
named variant alone (QA sees each arm).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from models import assignment
from models.assignment import Experiment, Holdout, Variant
from serve.store import DatabaseUnavailable, Pin, Store

log = logging.getLogger(__name__)

RETRY_S = 1.0
INTERLEAVED = "interleaved"  # the variant named for an interleaved list
HONOURED = ("model_version", "blend", "exploration_rate", "precompute")

EXPERIMENTS_SQL = """
SELECT experiment_key, layer, salt, layer_low, layer_high, kind, variants, status,
       starts_at, ends_at
FROM experiments
WHERE status = 'running' AND (ends_at IS NULL OR ends_at > now())
ORDER BY experiment_key
"""

OVERRIDES_SQL = """
SELECT o.experiment_key, o.user_id, o.variant
FROM experiment_overrides o JOIN experiments e USING (experiment_key)
WHERE e.status = 'running'
"""

# The variant versions of the live version (jobs/variants.py), by experiment and variant.
VARIANT_VERSIONS_SQL = """
SELECT m.params->>'experiment', m.params->>'variant', m.model_version, s.live_version
FROM model_runs m JOIN serving_state s ON m.params->>'base_version' = s.live_version
WHERE m.kind = 'variant' AND m.status = 'published'
"""

# The end of a version's data (of the versions kept: Store.has_lists, one at a time,
# so that each check reads its own partition only: serve/store.py HAS_LISTS_SQL).
DATA_UNTIL_SQL = """
SELECT COALESCE(m.data_until, m.published_at, m.finished_at, m.started_at)
FROM model_runs m WHERE m.model_version = %(version)s
"""


@dataclass(frozen=True)
class Route:
    """What one request is served. ``variant`` is :data:`INTERLEAVED` for an interleaved
    list (``arms`` then holds the experiment's variants, in order: the team indexes)."""

    experiment_key: str
    variant: str
    kind: str
    changes: Mapping[str, Any]
    reason: str
    arms: tuple[Variant, ...] = ()

    @property
    def model_version(self) -> str | None:
        v = self.changes.get("model_version")
        return v if isinstance(v, str) and v else None


@dataclass(frozen=True)
class Snapshot:
    """The process's current routing data."""

    experiments: tuple[Experiment, ...] = ()
    kinds: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    kept: Mapping[str, dt.datetime | None] = field(default_factory=dict)


def experiment_from_row(row: tuple) -> tuple[Experiment, str]:
    """An ``experiments`` row as a (running) Experiment and its kind."""
    key, layer, salt, low, high, kind, variants, status, starts, ends = row
    if isinstance(variants, str):
        variants = json.loads(variants)
    if not isinstance(variants, list):
        raise ValueError(f"experiment {key!r}: variants: must be a list")
    arms = []
    for v in variants:
        if not isinstance(v, Mapping) or not isinstance(v.get("key"), str):
            raise ValueError(f"experiment {key!r}: variants: each needs a string key")
        changes = v.get("changes") or {}
        if not isinstance(changes, Mapping):
            raise ValueError(f"experiment {key!r}: variants.changes: must be an object")
        arms.append(Variant(v["key"], v.get("weight"), changes))
    return Experiment(key=key, layer=layer, variants=tuple(arms), salt=salt or "",
                      layer_range=(float(low), float(high)), status=status, start=starts,
                      end=ends), kind


def accept(candidates: list[Experiment]) -> list[Experiment]:
    """The valid definitions, each checked alone and then against those accepted before
    it (layer ranges may not overlap); the others are logged and left out."""
    accepted: list[Experiment] = []
    for e in candidates:
        try:
            assignment.validate([*accepted, e])
        except ValueError as exc:
            log.error("experiment %s not routed: %s", e.key, exc)
            continue
        accepted.append(e)
    return accepted


def with_variant_versions(experiments: list[Experiment],
                          found: Mapping[tuple[str, str], tuple[str, str]]
                          ) -> list[Experiment]:
    """``experiments`` with each ``precompute`` variant that has a variant version in
    ``found`` (``(key, variant) -> (variant version, its base)``) pointed at it:
    ``model_version`` its lists, ``catalog_version`` the base's other lists."""
    out = []
    for e in experiments:
        arms = []
        for v in e.variants:
            got = found.get((e.key, v.key)) if "precompute" in v.changes else None
            if got is not None:
                v = Variant(v.key, v.weight, {**v.changes, "model_version": got[0],
                                              "catalog_version": got[1]})
            arms.append(v)
        out.append(dataclasses.replace(e, variants=tuple(arms)))
    return out


def route(snapshot: Snapshot, user_id: int, holdout: Holdout | None,
          at: dt.datetime | None = None) -> Route | None:
    """The user's route (None: in no running experiment). Pure compute."""
    if not snapshot.experiments:
        return None
    got = assignment.assign(user_id, snapshot.experiments, holdout=holdout,
                            overrides=snapshot.overrides, at=at)
    if not got:
        return None
    layers = sorted(got)
    primary = got[layers[0]]
    changes: dict[str, Any] = {}
    for layer in layers:
        for k, v in got[layer].changes.items():
            changes.setdefault(k, v)
    kind = snapshot.kinds.get(primary.experiment, "ab")
    if kind == "interleaving" and primary.reason == "hash":
        exp = next(e for e in snapshot.experiments if e.key == primary.experiment)
        return Route(primary.experiment, INTERLEAVED, kind, changes, primary.reason,
                     exp.variants)
    return Route(primary.experiment, primary.variant, "ab", changes, primary.reason)


class ExperimentSet:
    """The running experiments of this process, refreshed every ``ttl_s``."""

    def __init__(self, store: Store, holdout_fraction: float = 0.01, ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.holdout = Holdout(fraction=holdout_fraction)
        self.ttl_s = ttl_s
        self.clock = clock
        self._snapshot = Snapshot()
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Read the definitions now; False (and the last set kept) when that fails."""
        try:
            rows = self.store.fetchall(EXPERIMENTS_SQL)
            over_rows = self.store.fetchall(OVERRIDES_SQL) if rows else []
            candidates, kinds = [], {}
            for row in rows:
                try:
                    exp, kind = experiment_from_row(row)
                except (ValueError, TypeError) as exc:
                    log.error("experiment %s not routed: %s", row[0], exc)
                    continue
                candidates.append(exp)
                kinds[exp.key] = kind
            experiments = accept(candidates)
            if any("precompute" in v.changes for e in experiments for v in e.variants):
                found = {(key, variant): (version, base) for key, variant, version, base
                         in self.store.fetchall(VARIANT_VERSIONS_SQL)}
                experiments = with_variant_versions(experiments, found)
            variants = {e.key: {v.key for v in e.variants} for e in experiments}
            overrides: dict[str, dict[str, str]] = {}
            for key, user, variant in over_rows:
                if variant in variants.get(key, ()):
                    overrides.setdefault(str(user), {})[key] = variant
                elif key in variants:
                    log.error("override of user %s in %s names no variant %r", user, key,
                              variant)
            names = sorted({v.changes[k] for e in experiments for v in e.variants
                            for k in ("model_version", "catalog_version")
                            if isinstance(v.changes.get(k), str)})
            kept = {}
            for name in names:
                if self.store.has_lists(name):
                    row = self.store.fetchone(DATA_UNTIL_SQL, {"version": name})
                    kept[name] = row[0] if row else None
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            if not isinstance(exc, DatabaseUnavailable):
                log.error("experiments unreadable, keeping the last %d: %s",
                          len(self._snapshot.experiments), exc)
            self._next_refresh = self.clock() + min(RETRY_S, self.ttl_s)
            return False
        if [e.key for e in experiments] != [e.key for e in self._snapshot.experiments]:
            log.info("running experiments: %s", ", ".join(e.key for e in experiments)
                     or "none")
        self._snapshot = Snapshot(tuple(experiments), kinds, overrides, kept)
        self._next_refresh = self.clock() + self.ttl_s
        return True

    def get(self) -> Snapshot:
        """The current set; refreshed first when stale (by one request at a time)."""
        if (self.clock() >= self._next_refresh and not self.store.is_down
                and self._lock.acquire(blocking=False)):
            try:
                if self.clock() >= self._next_refresh:
                    self.refresh()
            finally:
                self._lock.release()
        return self._snapshot

    def route(self, user_id: int, at: dt.datetime | None = None) -> Route | None:
        """The user's route now (or at ``at``): experiments outside their
        ``[starts_at, ends_at)`` at that time are left out."""
        return route(self.get(), user_id, self.holdout, at or dt.datetime.now(dt.UTC))

    def pin(self, version: str | None) -> Pin | None:
        """The pin for ``version`` when it is still kept, else None."""
        if version is None:
            return None
        kept = self._snapshot.kept
        if version not in kept:
            return None
        return Pin(version, kept[version])
