"""Experiments as data: create, start, stop, list, show and QA overrides (issue 13).

What ``recs experiments ...`` does, as typed functions over the ``experiments`` and
``experiment_overrides`` tables (sql/012, sql/013). Checks, each raising
:class:`ExperimentError` (a ValueError) that names the experiment and the field:

- the definition (``models.assignment.validate_experiment``): key, layer, at least two
  variants with unique keys, weights in [0, 1] summing to 1, the layer range, end after
  start; plus the kind (``ab`` or ``interleaving``), the primary metric, each variant's
  ``changes`` an object, a ``changes.precompute`` with known keys in range
  (jobs/configs.py:variant_funnel; jobs/variants.py computes such a variant's lists);
- what only the database knows: a variant's ``changes.model_version`` names a
  ``model_runs`` row that is ``published`` or ``evaluated`` (checked at create and again
  at start);
- one user in at most one experiment per layer: when an experiment starts, the running
  experiments of its layer must have ranges disjoint from its own
  (``models.assignment.validate`` over them). The check and the status change happen in
  one transaction holding a per-layer advisory lock, so two concurrent starts of
  overlapping experiments cannot both pass;
- status moves draft -> running -> stopped only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.errors

from core import db
from models import assignment
from models.assignment import Experiment, Variant

KINDS = ("ab", "interleaving")
METRICS = ("ctr", "conversion")
USABLE_MODEL_STATUSES = ("published", "evaluated")
TRANSITIONS = {"start": ("draft", "running"), "stop": ("running", "stopped")}
COLUMNS = ("experiment_key", "layer", "salt", "layer_low", "layer_high", "kind", "variants",
           "status", "owner", "primary_metric", "starts_at", "ends_at", "created_at",
           "updated_at", "stopped_at")


class ExperimentError(ValueError):
    """A bad definition or a refused change; the message names the experiment and field."""


def _bad(key: str, field_name: str, why: str) -> ExperimentError:
    return ExperimentError(f"experiment {key!r}: {field_name}: {why}")


@dataclass(frozen=True)
class Stored:
    """An experiment as stored: the definition, its kind and its bookkeeping times."""

    experiment: Experiment
    kind: str
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    stopped_at: dt.datetime | None = None

    @property
    def key(self) -> str:
        return self.experiment.key

    def as_dict(self) -> dict:
        e = self.experiment
        return {"key": e.key, "kind": self.kind, "layer": e.layer, "salt": e.salt,
                "range": list(e.layer_range), "status": e.status, "owner": e.owner,
                "primary_metric": e.primary_metric,
                "variants": [variant_dict(v) for v in e.variants],
                "starts_at": _iso(e.start), "ends_at": _iso(e.end),
                "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
                "stopped_at": _iso(self.stopped_at)}


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def variant_dict(v: Variant) -> dict:
    return {"key": v.key, "weight": v.weight, "changes": dict(v.changes)}


# --- parsing (what the command line hands over) ------------------------------------------

def parse_variant(text: str, key: str = "?") -> Variant:
    """``name=weight`` or ``name=weight:{"model_version": "v1"}`` as a Variant."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise _bad(key, "variant", f"{text!r} must look like name=weight[:changes-json]")
    weight_text, _, changes_text = rest.partition(":")
    try:
        weight = float(weight_text)
    except ValueError:
        raise _bad(key, "variants.weight", f"{name!r} has {weight_text!r}, not a number"
                   ) from None
    changes = _changes(key, name, changes_text) if changes_text else {}
    return Variant(name.strip(), weight, changes)


def _changes(key: str, name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(key, "variants.changes", f"{name!r}: not JSON ({exc.msg} at column "
                   f"{exc.colno})") from None
    if not isinstance(value, dict):
        raise _bad(key, "variants.changes", f"{name!r}: must be a JSON object, got "
                   f"{type(value).__name__}")
    return value


def parse_variants_json(text: str, key: str = "?") -> list[Variant]:
    """``[{"key": ..., "weight": ..., "changes": {...}}, ...]`` as Variants."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(key, "variants", f"not JSON ({exc.msg} at column {exc.colno})") from None
    return variants_from_json(value, key)


def variants_from_json(value: Any, key: str = "?") -> list[Variant]:
    if not isinstance(value, list):
        raise _bad(key, "variants", "must be a JSON array of {key, weight, changes}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, dict) or "key" not in v or "weight" not in v:
            raise _bad(key, f"variants[{i}]", "must be an object with key and weight")
        extra = set(v) - {"key", "weight", "changes"}
        if extra:
            raise _bad(key, f"variants[{i}]", f"unknown fields {sorted(extra)}")
        changes = v.get("changes", {})
        if not isinstance(changes, dict):
            raise _bad(key, "variants.changes", f"{v['key']!r}: must be a JSON object")
        weight = v["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _bad(key, "variants.weight", f"{v['key']!r} has {weight!r}, not a number")
        out.append(Variant(str(v["key"]), float(weight), changes))
    return out


def parse_range(text: str, key: str = "?") -> tuple[float, float]:
    """``lo:hi`` (or ``lo,hi``) as the layer range [lo, hi)."""
    parts = text.replace(",", ":").split(":")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise _bad(key, "range", f"{text!r} must look like lo:hi, e.g. 0:0.5") from None
    return lo, hi


def parse_time(text: str | None, field_name: str, key: str = "?") -> dt.datetime | None:
    """An ISO date or time (UTC when it names no zone)."""
    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _bad(key, field_name, f"{text!r} is not an ISO date or time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


# --- checks --------------------------------------------------------------------------------

def check_definition(exp: Experiment, kind: str) -> None:
    """Everything that needs no database (see the module's docstring)."""
    try:
        assignment.validate_experiment(exp)
    except ExperimentError:
        raise
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    if kind not in KINDS:
        raise _bad(exp.key, "kind", f"{kind!r} is not one of {KINDS}")
    if exp.primary_metric not in METRICS:
        raise _bad(exp.key, "primary_metric", f"{exp.primary_metric!r} is not one of "
                   f"{METRICS}")
    for v in exp.variants:
        mv = v.changes.get("model_version")
        if mv is not None and (not isinstance(mv, str) or not mv):
            raise _bad(exp.key, "variants.changes.model_version",
                       f"{v.key!r} has {mv!r}, must be a non-empty string")
        if "precompute" in v.changes:
            if mv is not None:
                raise _bad(exp.key, "variants.changes.precompute",
                           f"{v.key!r} names both a model_version and a precompute; a "
                           "precompute variant is served its own lists")
            # (The funnel's configuration imports torch: only when a variant needs it.)
            from jobs.configs import variant_funnel
            from models.funnel import FunnelConfig

            try:  # over the defaults: the keys and their ranges
                variant_funnel(FunnelConfig(), "full_pipeline", v.changes["precompute"])
            except ValueError as exc:
                raise _bad(exp.key, "variants.changes.precompute",
                           f"{v.key!r}: {exc}") from None


def check_model_versions(cur, exp: Experiment) -> None:
    """Each ``changes.model_version`` is a published or evaluated model run."""
    wanted = {v.key: v.changes["model_version"] for v in exp.variants
              if "model_version" in v.changes}
    if not wanted:
        return
    cur.execute("SELECT model_version, status FROM model_runs WHERE model_version = ANY(%s)",
                (sorted(set(wanted.values())),))
    status = dict(cur.fetchall())
    for variant, version in wanted.items():
        if version not in status:
            raise _bad(exp.key, "variants.changes.model_version",
                       f"{variant!r} names {version!r}, which is not in model_runs")
        if status[version] not in USABLE_MODEL_STATUSES:
            raise _bad(exp.key, "variants.changes.model_version",
                       f"{variant!r} names {version!r}, which is {status[version]!r} (must be "
                       f"one of {USABLE_MODEL_STATUSES})")


def check_layer_free(cur, exp: Experiment) -> None:
    """No running experiment of ``exp``'s layer overlaps its range (caller holds the
    layer's lock)."""
    others = [s.experiment for s in _select(cur, "status = 'running' AND layer = %s "
                                                 "AND experiment_key <> %s",
                                            (exp.layer, exp.key))]
    lo, hi = exp.layer_range
    clash = [o for o in others if o.layer_range[0] < hi and lo < o.layer_range[1]]
    if clash:
        names = ", ".join(f"{o.key!r} {o.layer_range!r}" for o in clash)
        raise _bad(exp.key, "layer_range", f"{exp.layer_range!r} overlaps running {names} "
                   f"in layer {exp.layer!r}; a user may be in at most one running "
                   "experiment per layer")
    try:  # the same rule as the reader's check of everything it loads
        assignment.validate([*others, exp])
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None


# --- storage ------------------------------------------------------------------------------

def _from_row(row: Sequence) -> Stored:
    r = dict(zip(COLUMNS, row, strict=True))
    exp = Experiment(key=r["experiment_key"], layer=r["layer"],
                     variants=tuple(variants_from_json(r["variants"], r["experiment_key"])),
                     salt=r["salt"], layer_range=(r["layer_low"], r["layer_high"]),
                     status=r["status"], start=r["starts_at"], end=r["ends_at"],
                     owner=r["owner"], primary_metric=r["primary_metric"])
    return Stored(exp, r["kind"], r["created_at"], r["updated_at"], r["stopped_at"])


def _select(cur, where: str = "TRUE", params: Sequence = (),
            lock: bool = False) -> list[Stored]:
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM experiments WHERE {where} "
                f"ORDER BY experiment_key{' FOR UPDATE' if lock else ''}", params)
    return [_from_row(r) for r in cur.fetchall()]


def get(cur, key: str, lock: bool = False) -> Stored:
    """The stored experiment ``key``; ExperimentError when there is none."""
    found = _select(cur, "experiment_key = %s", (key,), lock)
    if not found:
        raise _bad(key, "key", "no such experiment")
    return found[0]


def create(dsn: str, exp: Experiment, kind: str = "ab") -> Stored:
    """Store a new draft experiment after every check but the layer's (done at start)."""
    if exp.status != "draft":
        raise _bad(exp.key, "status", "a new experiment starts as 'draft'")
    check_definition(exp, kind)
    with db.transaction(dsn) as cur:
        check_model_versions(cur, exp)
        cur.execute("SELECT 1 FROM experiments WHERE experiment_key = %s", (exp.key,))
        if cur.fetchone() is not None:
            raise _bad(exp.key, "key", "already exists")
        try:
            cur.execute(
                "INSERT INTO experiments (experiment_key, layer, salt, layer_low, layer_high, "
                "kind, variants, status, owner, primary_metric, starts_at, ends_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 'draft', %s, %s, %s, %s)",
                (exp.key, exp.layer, exp.salt, exp.layer_range[0], exp.layer_range[1], kind,
                 json.dumps([variant_dict(v) for v in exp.variants]), exp.owner,
                 exp.primary_metric, exp.start, exp.end))
        except psycopg2.errors.CheckViolation as exc:
            # The table's own checks (the key's pattern, a blank layer) name the constraint.
            constraint = exc.diag.constraint_name or "?"
            field_name = {"experiments_experiment_key_check": "key",
                          "experiments_layer_check": "layer"}.get(constraint, constraint)
            raise _bad(exp.key, field_name, "refused by the table's check "
                       f"({constraint}): keys are lower-case letters, digits, '_', '.', '-', "
                       "at most 64") from None
        return get(cur, exp.key)


def _transition(dsn: str, key: str, action: str) -> Stored:
    before, after = TRANSITIONS[action]
    with db.transaction(dsn) as cur:
        # The layer's lock first (read without locking the row), then the row.
        layer = get(cur, key).experiment.layer
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("experiments:layer:" + layer,))
        stored = get(cur, key, lock=True)
        exp = stored.experiment
        if exp.status != before:
            raise _bad(key, "status", f"is {exp.status!r}; {action} needs {before!r} "
                       "(draft -> running -> stopped only)")
        if action == "start":
            check_definition(exp, stored.kind)
            check_model_versions(cur, exp)
            cur.execute("SELECT now()")
            (now,) = cur.fetchone()
            if exp.end is not None and exp.end <= now:
                raise _bad(key, "end", f"{exp.end.isoformat()} has passed")
            check_layer_free(cur, exp)
            cur.execute("UPDATE experiments SET status = 'running', "
                        "starts_at = coalesce(starts_at, now()), updated_at = now() "
                        "WHERE experiment_key = %s", (key,))
        else:
            cur.execute("UPDATE experiments SET status = 'stopped', stopped_at = now(), "
                        "updated_at = now() WHERE experiment_key = %s", (key,))
        return get(cur, key)


def start(dsn: str, key: str) -> Stored:
    """draft -> running, once the layer is free for its range (start time: now, unless
    one was planned)."""
    return _transition(dsn, key, "start")


def stop(dsn: str, key: str) -> Stored:
    """running -> stopped (``stopped_at`` records when)."""
    return _transition(dsn, key, "stop")


def running_experiments(cur) -> list[Stored]:
    """The experiments with status 'running', in key order (inside the caller's
    transaction)."""
    return _select(cur, "status = 'running'")


def list_all(dsn: str, status: str | None = None) -> list[Stored]:
    with db.transaction(dsn) as cur:
        if status is None:
            return _select(cur)
        return _select(cur, "status = %s", (status,))


def overrides(cur, key: str) -> dict[int, str]:
    cur.execute("SELECT user_id, variant FROM experiment_overrides WHERE experiment_key = %s "
                "ORDER BY user_id", (key,))
    return dict(cur.fetchall())


def set_override(dsn: str, key: str, user_id: int, variant: str | None) -> dict[int, str]:
    """Force ``user_id`` into ``variant`` of ``key`` (QA); None removes the override.
    Returns the experiment's overrides."""
    with db.transaction(dsn) as cur:
        exp = get(cur, key).experiment
        if variant is None:
            cur.execute("DELETE FROM experiment_overrides WHERE experiment_key = %s "
                        "AND user_id = %s", (key, user_id))
            if cur.rowcount == 0:
                raise _bad(key, "override", f"user {user_id} has none")
        else:
            names = [v.key for v in exp.variants]
            if variant not in names:
                raise _bad(key, "variant", f"{variant!r} is not one of {names}")
            cur.execute("INSERT INTO experiment_overrides (experiment_key, user_id, variant) "
                        "VALUES (%s, %s, %s) ON CONFLICT (experiment_key, user_id) "
                        "DO UPDATE SET variant = EXCLUDED.variant, created_at = now()",
                        (key, user_id, variant))
        return overrides(cur, key)


def show(dsn: str, key: str) -> dict:
    """The definition, its overrides and its newest decision (None before any analysis)."""
    with db.transaction(dsn) as cur:
        out = get(cur, key).as_dict()
        out["overrides"] = {str(u): v for u, v in overrides(cur, key).items()}
        out["latest_decision"] = latest_decision(cur, key)
    return out


def latest_decision(cur, key: str, day: dt.date | None = None) -> dict | None:
    """The newest stored decision of ``key`` (on or before ``day`` when given)."""
    cur.execute("SELECT day, action, reason, srm_p_value, details FROM experiment_decisions "
                "WHERE experiment_key = %s AND (%s::date IS NULL OR day <= %s::date) "
                "ORDER BY day DESC LIMIT 1", (key, day, day))
    row = cur.fetchone()
    if row is None:
        return None
    return {"day": row[0].isoformat(), "action": row[1], "reason": row[2],
            "srm_p_value": row[3], "details": row[4]}


def build(key: str, *, layer: str = "default", salt: str = "",
          layer_range: tuple[float, float] = (0.0, 1.0), variants: Sequence[Variant] = (),
          owner: str = "", primary_metric: str = "ctr", start: dt.datetime | None = None,
          end: dt.datetime | None = None) -> Experiment:
    """A draft Experiment from the command line's pieces (nothing checked yet)."""
    lo, hi = layer_range
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _bad(key, "range", f"{layer_range!r} must be finite")
    return Experiment(key=key, layer=layer, variants=tuple(variants), salt=salt,
                      layer_range=(lo, hi), status="draft", start=start, end=end,
                      owner=owner, primary_metric=primary_metric)

