"""Deterministic, stateless experiment assignment (pure compute).

Hashing follows GrowthBook's SDK so that an assignment can be reproduced by anyone with the
experiment's definition and the user id:

- v1: ``fnv1a32(user_id + seed) % 1000 / 1000``;
- v2: ``fnv1a32(str(fnv1a32(seed + user_id))) % 10000 / 10000`` (the default here: the
  outer hash removes v1's bias between seeds that share a prefix).

``fnv1a32`` is 32-bit FNV-1a over the string's characters (code points, as GrowthBook's
Python SDK does; the JavaScript SDK hashes UTF-16 code units, which agrees for every
character of the Basic Multilingual Plane). Python's ``hash()`` is never used, so the same
user gets the same answer in every process and after every restart.

A *layer* is a namespace: each user has one position in ``[0, 1)`` per layer (v2 hash with
the seed ``"__layer:" + layer``), and every experiment of the layer owns a range of it
(``Experiment.layer_range``). Ranges of one layer may not overlap, so a user is in at most
one experiment per layer; positions in different layers come from different seeds, so
experiments in different layers are assigned independently. Within its range an
experiment picks the variant with a second hash (seed ``Experiment.salt``), split by the
variants' traffic weights, so the variant does not depend on where in the range the user
fell. A global holdout (v2 hash with its own seed) keeps a fixed share of users out of
every experiment; they see the default (control) experience. QA overrides force a variant
for a named user and win over everything else.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
STATUSES = ("draft", "running", "stopped")
WEIGHT_TOLERANCE = 1e-9
LAYER_SEED_PREFIX = "__layer:"
DEFAULT_HOLDOUT_FRACTION = 0.01
DEFAULT_HOLDOUT_SEED = "__holdout"


def fnv1a32(value: str) -> int:
    """32-bit FNV-1a hash of ``value``'s characters."""
    h = FNV_OFFSET
    for ch in value:
        h ^= ord(ch)
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def gb_hash(seed: str, value: str, version: int = 2) -> float | None:
    """GrowthBook's hash of ``value`` under ``seed``, in ``[0, 1)``; None for an unknown
    version (as GrowthBook returns)."""
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    return None


def bucket_ranges(n: int, coverage: float = 1.0,
                  weights: list[float] | None = None) -> list[tuple[float, float]]:
    """GrowthBook's ``getBucketRanges``: ``n`` variant ranges in ``[0, 1]``.

    Coverage is clamped to ``[0, 1]``; weights of the wrong length or whose sum is
    outside ``[0.99, 1.01]`` fall back to equal weights (GrowthBook's lenient rule for its
    SDK; :func:`validate` is strict and rejects such definitions before they get here).
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n or not 0.99 <= sum(weights) <= 1.01:
        weights = [1.0 / n] * n
    out, cumulative = [], 0.0
    for w in weights:
        start = cumulative
        cumulative += w
        out.append((start, start + coverage * w))
    return out


def choose_variation(n: float, ranges: list[tuple[float, float]]) -> int:
    """Index of the range holding ``n`` (start inclusive, end exclusive), or -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


@dataclass(frozen=True)
class Variant:
    """One arm: its key, its share of the experiment's traffic and what it changes
    (a plain mapping, e.g. ``{"model_version": "v42"}`` or ``{"ranker": False}``)."""

    key: str
    weight: float
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))

    def __reduce__(self):
        # A read-only mapping does not pickle; Spark ships definitions to executors.
        return (Variant, (self.key, self.weight, dict(self.changes)))


@dataclass(frozen=True)
class Experiment:
    """An experiment as data. The first variant is the control: what holdout users and
    users outside every experiment see. ``salt`` seeds the variant hash (the key when
    empty); ``layer_range`` is the slice of the layer's positions this experiment owns."""

    key: str
    layer: str
    variants: tuple[Variant, ...]
    salt: str = ""
    layer_range: tuple[float, float] = (0.0, 1.0)
    status: str = "draft"
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    owner: str = ""
    primary_metric: str = "ctr"

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "layer_range", tuple(self.layer_range))

    @property
    def seed(self) -> str:
        return self.salt or self.key

    @property
    def control(self) -> Variant:
        return self.variants[0]

    def live_at(self, at: dt.datetime | None) -> bool:
        """Running, and ``at`` (when given) inside ``[start, end)``."""
        if self.status != "running":
            return False
        if at is None:
            return True
        return ((self.start is None or self.start <= at)
                and (self.end is None or at < self.end))


@dataclass(frozen=True)
class Assignment:
    """A user's place in one layer. ``reason`` is ``"hash"`` or ``"override"``; ``bucket``
    is the variant hash (None for an override)."""

    layer: str
    experiment: str
    variant: str
    changes: Mapping[str, Any]
    bucket: float | None
    reason: str


def _bad(key: str, field_name: str, why: str) -> ValueError:
    return ValueError(f"experiment {key!r}: {field_name}: {why}")


def validate_experiment(exp: Experiment) -> None:
    """Raise ValueError naming the field when ``exp`` is not a valid definition."""
    if not exp.key or not isinstance(exp.key, str):
        raise _bad(exp.key, "key", "must be a non-empty string")
    if not exp.layer or not isinstance(exp.layer, str):
        raise _bad(exp.key, "layer", "must be a non-empty string")
    if exp.status not in STATUSES:
        raise _bad(exp.key, "status", f"{exp.status!r} is not one of {STATUSES}")
    if len(exp.variants) < 2:
        raise _bad(exp.key, "variants", "needs at least two (control first)")
    keys = [v.key for v in exp.variants]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise _bad(exp.key, "variants.key", f"not unique: {dupes}")
    if any(not k for k in keys):
        raise _bad(exp.key, "variants.key", "must be non-empty")
    for v in exp.variants:
        if not (isinstance(v.weight, int | float) and math.isfinite(v.weight)
                and 0.0 <= v.weight <= 1.0):
            raise _bad(exp.key, "variants.weight", f"{v.key!r} has {v.weight!r}, "
                       "must be in [0, 1]")
    total = math.fsum(v.weight for v in exp.variants)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise _bad(exp.key, "variants.weight", f"sum to {total!r}, must be 1")
    lo, hi = exp.layer_range if len(exp.layer_range) == 2 else (math.nan, math.nan)
    if not (0.0 <= lo < hi <= 1.0):
        raise _bad(exp.key, "layer_range", f"{exp.layer_range!r} must be [lo, hi) "
                   "with 0 <= lo < hi <= 1")
    if exp.start is not None and exp.end is not None and exp.end <= exp.start:
        raise _bad(exp.key, "end", "must be after start")


def validate(experiments: Iterable[Experiment]) -> list[Experiment]:
    """Validate each definition, and that keys are unique and no two experiments of one
    layer have overlapping ranges. Returns the experiments as a list."""
    exps = list(experiments)
    seen: dict[str, Experiment] = {}
    for e in exps:
        validate_experiment(e)
        if e.key in seen:
            raise _bad(e.key, "key", "used by two experiments")
        seen[e.key] = e
    by_layer: dict[str, list[Experiment]] = {}
    for e in exps:
        by_layer.setdefault(e.layer, []).append(e)
    for layer, group in by_layer.items():
        group = sorted(group, key=lambda e: e.layer_range)
        for a, b in zip(group, group[1:], strict=False):
            if b.layer_range[0] < a.layer_range[1]:
                raise _bad(b.key, "layer_range", f"{b.layer_range!r} overlaps "
                           f"{a.key!r} {a.layer_range!r} in layer {layer!r}")
    return exps


def layer_position(user_id: str, layer: str) -> float:
    """The user's position in ``layer``, in ``[0, 1)``."""
    return gb_hash(LAYER_SEED_PREFIX + layer, str(user_id), 2)


@dataclass(frozen=True)
class Holdout:
    """The global holdout: users whose hash under ``seed`` is below ``fraction``."""

    fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: str = DEFAULT_HOLDOUT_SEED

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"holdout.fraction: {self.fraction!r} must be in [0, 1)")


def in_holdout(user_id: str, holdout: Holdout | None = Holdout()) -> bool:
    """Whether the user is in the global holdout (never sees a treatment)."""
    return holdout is not None and gb_hash(holdout.seed, str(user_id), 2) < holdout.fraction


def variant_for(exp: Experiment, user_id: str) -> tuple[Variant, float]:
    """The variant ``exp`` gives ``user_id`` by traffic weight, and the hash used."""
    n = gb_hash(exp.seed, str(user_id), 2)
    cumulative = 0.0
    for v in exp.variants[:-1]:
        cumulative += v.weight
        if n < cumulative:
            return v, n
    return exp.variants[-1], n  # the last range ends at 1 exactly, whatever the rounding


def assign(user_id: str | int, experiments: Iterable[Experiment], *,
           holdout: Holdout | None = Holdout(),
           overrides: Mapping[str, Mapping[str, str]] | None = None,
           at: dt.datetime | None = None) -> dict[str, Assignment]:
    """The user's assignment in each layer where they are in a live experiment.

    ``experiments`` should have passed :func:`validate` (the reader validates once at
    load, not per request). Only running experiments count, and only inside their
    ``[start, end)`` when ``at`` is given. ``overrides`` maps a user id to
    ``{experiment key: variant key}`` (QA); an override wins over the holdout and the
    layer ranges. A holdout user gets nothing but overrides: the default experience.
    """
    uid = str(user_id)
    live = [e for e in experiments if e.live_at(at)]
    out: dict[str, Assignment] = {}
    forced = (overrides or {}).get(uid, {})
    for e in live:
        if e.key in forced:
            v = next((v for v in e.variants if v.key == forced[e.key]), None)
            if v is None:
                raise ValueError(f"override for user {uid!r}: experiment {e.key!r} has no "
                                 f"variant {forced[e.key]!r}")
            out[e.layer] = Assignment(e.layer, e.key, v.key, v.changes, None, "override")
    if in_holdout(uid, holdout):
        return out
    positions: dict[str, float] = {}
    for e in live:
        if e.layer in out:
            continue
        pos = positions.get(e.layer)
        if pos is None:
            pos = positions[e.layer] = layer_position(uid, e.layer)
        lo, hi = e.layer_range
        if lo <= pos < hi:
            v, n = variant_for(e, uid)
            out[e.layer] = Assignment(e.layer, e.key, v.key, v.changes, n, "hash")
    return out


@dataclass(frozen=True)
class VariantUsers:
    """The users :func:`assign` puts in ``variant`` of experiment ``key`` among the
    running ``experiments`` (by hash or by a QA override), whatever the time: those a
    variant's own lists are precomputed for. Picklable, so that Spark executors filter
    their users with it."""

    experiments: tuple[Experiment, ...]
    key: str
    variant: str
    holdout: Holdout | None = Holdout()
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        exp = next((e for e in self.experiments if e.key == self.key), None)
        if exp is None:
            raise ValueError(f"experiment {self.key!r}: not among the running experiments")
        if self.variant not in {v.key for v in exp.variants}:
            raise ValueError(f"experiment {self.key!r}: no variant {self.variant!r}")

    def __contains__(self, user_id: object) -> bool:
        got = assign(str(user_id), self.experiments, holdout=self.holdout,
                     overrides=self.overrides)
        return any(a.experiment == self.key and a.variant == self.variant
                   for a in got.values())

    def mask(self, user_ids: Iterable[int]) -> list[bool]:
        """Whether each of ``user_ids`` is in the variant (each distinct id hashed once)."""
        ids = [int(u) for u in user_ids]
        member = {u: u in self for u in set(ids)}
        return [member[u] for u in ids]
