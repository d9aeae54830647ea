"""A deterministic synthetic catalog, user base and event stream with learnable structure.

Items have Zipf popularity, one category and 2-4 tags from that category's vocabulary.
Users belong to 1-2 taste clusters, each tied to preferred categories, and mostly pick
items from those categories weighted by popularity, so a collaborative model has real
signal to find. Events fall in ``[end_date - n_days, end_date)`` (UTC, unix seconds),
each after its item's and its user's ``created_ts``, and are generated in fixed blocks
with their own seeded generator, so memory stays bounded at any ``n_events`` and the
data does not depend on the chunk size asked for.

Optional shape knobs (all off by default, which keeps the original data and digest):
heavier-tailed user activity (cold start), sequential sessions that walk a seeded
per-category chain of successor items, and users whose preferred categories switch at
a point in time. :data:`SHAPES` names presets of them for robustness benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from core.constants import EVENT_TYPES
from jobs.ingest import EVENT_COLUMNS, stable_ids

GENERATOR_VERSION = 1  # bump when the generated data changes for the same config
BLOCK_ROWS = 50_000  # events per generator block (fixes the data, whatever the chunking)
CHUNK_ROWS = 50_000

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("drama", ("family", "period", "courtroom", "coming-of-age", "biopic", "tearjerker",
               "slow-burn", "award-winner")),
    ("comedy", ("satire", "parody", "romcom", "slapstick", "dark-humor", "feel-good",
                "quirky", "ensemble")),
    ("action", ("heist", "martial-arts", "car-chase", "spy", "superhero", "revenge",
                "military", "explosions")),
    ("documentary", ("nature", "true-crime", "history", "science", "music", "sports",
                     "politics", "travel")),
    ("sci-fi", ("space", "time-travel", "dystopia", "robots", "aliens", "cyberpunk",
                "post-apocalyptic", "hard-sf")),
    ("romance", ("first-love", "wedding", "long-distance", "second-chance", "forbidden",
                 "holiday", "period", "slow-burn")),
    ("thriller", ("psychological", "conspiracy", "serial-killer", "hostage", "twist-ending",
                  "noir", "cat-and-mouse", "legal")),
    ("animation", ("kids", "stop-motion", "anime", "musical", "talking-animals", "fairy-tale",
                   "adventure", "family")),
    ("horror", ("haunted-house", "slasher", "zombies", "supernatural", "body-horror",
                "found-footage", "vampires", "folk-horror")),
    ("fantasy", ("dragons", "magic", "quest", "sword-and-sorcery", "mythology", "fairy-tale",
                 "epic", "witches")),
    ("mystery", ("whodunit", "detective", "cold-case", "small-town", "amateur-sleuth",
                 "locked-room", "cozy", "twist-ending")),
    ("western", ("frontier", "outlaws", "gunslinger", "cattle-drive", "revisionist",
                 "bounty-hunter", "desert", "revenge")),
)

COUNTRIES: tuple[tuple[str, float], ...] = (
    ("US", 0.30), ("IN", 0.12), ("GB", 0.08), ("DE", 0.08), ("BR", 0.08), ("FR", 0.06),
    ("JP", 0.06), ("CA", 0.05), ("MX", 0.05), ("AU", 0.04), ("ES", 0.04), ("NL", 0.04))

_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Last", "Broken", "Golden", "Midnight", "Distant",
    "Forgotten", "Electric", "Frozen", "Burning", "Hollow", "Iron", "Quiet", "Restless",
    "Scarlet", "Secret", "Shattered", "Silver", "Wandering", "Wild", "Velvet", "Endless",
    "Northern", "Lonely", "Bitter", "Savage", "Gentle", "Ancient", "Painted", "Falling")
_NOUNS = (
    "Harbor", "Garden", "Empire", "River", "Kingdom", "Signal", "Horizon", "Orchard",
    "Lighthouse", "Mirror", "Frontier", "Circus", "Station", "Valley", "Cathedral", "Storm",
    "Island", "Compass", "Archive", "Machine", "Voyage", "Desert", "Forest", "Tower",
    "Canyon", "Serpent", "Winter", "Summer", "Shadow", "Crown", "Ember", "Tide")
_SEQUELS = ("", " II", " III", " IV", " V")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of a synthetic dataset; equal configs generate equal data."""

    n_users: int = 1000
    n_items: int = 500
    n_events: int = 50_000
    n_days: int = 30
    end_date: date = date(2026, 11, 1)  # events end before midnight UTC of this day
    n_categories: int = 8
    seed: int = 42
    zipf_exponent: float = 1.1
    new_item_fraction: float = 0.05  # items added in the last ``new_item_days`` days
    new_item_days: int = 3  # capped at n_days
    preferred_share: float = 0.8  # share of picks from the user's preferred categories
    event_weights: tuple[float, float, float, float] = (0.6, 0.25, 0.05, 0.1)  # EVENT_TYPES
    # Shape knobs; at their defaults they are left out of params(), so digests stay put.
    activity_sigma: float = 1.0  # sigma of the lognormal user activity (median user: 1)
    activity_cap: float = 0.0  # if > 0, no user is more active than this many median users
    sequential_share: float = 0.0  # share of events that continue the previous item's chain
    drift_share: float = 0.0  # share of users whose preferred categories switch once

    def __post_init__(self) -> None:
        for name, lo in (("n_users", 1), ("n_items", 1), ("n_events", 0), ("n_days", 1),
                         ("n_categories", 1), ("seed", 0), ("new_item_days", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"SyntheticConfig.{name}={v!r}: expected an integer")
            if v < lo:
                raise ValueError(f"SyntheticConfig.{name}={v}: must be at least {lo}")
        if self.n_categories > len(CATEGORIES):
            raise ValueError(f"SyntheticConfig.n_categories={self.n_categories}: "
                             f"at most {len(CATEGORIES)}")
        if isinstance(self.end_date, datetime) or not isinstance(self.end_date, date):
            raise ValueError(f"SyntheticConfig.end_date={self.end_date!r}: expected a date")
        if not 0 < self.zipf_exponent <= 10:
            raise ValueError(f"SyntheticConfig.zipf_exponent={self.zipf_exponent}: "
                             "must be in (0, 10]")
        for name in ("new_item_fraction", "preferred_share", "sequential_share", "drift_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SyntheticConfig.{name}={v}: must be between 0 and 1")
        if not 0 < self.activity_sigma <= 10:
            raise ValueError(f"SyntheticConfig.activity_sigma={self.activity_sigma}: "
                             "must be in (0, 10]")
        if not (self.activity_cap == 0 or 1 <= self.activity_cap <= 1e6):
            raise ValueError(f"SyntheticConfig.activity_cap={self.activity_cap}: "
                             "must be 0 (no cap) or in [1, 1e6]")
        w = self.event_weights
        if (len(w) != len(EVENT_TYPES) or any(x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"SyntheticConfig.event_weights={w!r}: expected "
                             f"{len(EVENT_TYPES)} non-negative weights with a positive sum "
                             f"for {EVENT_TYPES}")

    @property
    def start_ts(self) -> int:
        """Unix seconds of the first instant of the event period."""
        return self.end_ts - self.n_days * 86_400

    @property
    def end_ts(self) -> int:
        """Unix seconds of the end of the event period (exclusive)."""
        return int(datetime(self.end_date.year, self.end_date.month, self.end_date.day,
                            tzinfo=UTC).timestamp())

    @property
    def first_day(self) -> date:
        return self.end_date - timedelta(days=self.n_days)

    @property
    def last_day(self) -> date:
        return self.end_date - timedelta(days=1)

    def params(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["end_date"] = self.end_date.isoformat()
        d["event_weights"] = list(self.event_weights)
        d["generator_version"] = GENERATOR_VERSION
        for name, default in _SHAPE_DEFAULTS.items():
            if d[name] == default:
                del d[name]  # configs from before the shape knobs keep their digest
            else:
                d[name] = float(d[name])
        return d

    def digest(self) -> str:
        """sha256 over the config's fields (and the generator version)."""
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()


_SHAPE_DEFAULTS: dict[str, float] = {
    "activity_sigma": 1.0, "activity_cap": 0.0, "sequential_share": 0.0, "drift_share": 0.0}

SHAPES: dict[str, dict[str, object]] = {
    "default": {},
    "popular": {"zipf_exponent": 1.6, "preferred_share": 0.5},  # strong popularity skew
    "longtail": {"zipf_exponent": 0.4, "preferred_share": 0.95},  # flat, taste-driven
    "sequential": {"sequential_share": 0.6},  # sessions along successor chains
    # Heavy cold start: many users with a handful of events; the cap keeps one user from
    # taking a large share of all events. n_users is 2.5x the default (overridable).
    "coldstart": {"activity_sigma": 2.5, "activity_cap": 100.0, "n_users": 2500},
    "drift": {"drift_share": 0.7},  # most users switch preferred categories once
}


def shape_config(name: str, **overrides: object) -> SyntheticConfig:
    """The :data:`SHAPES` preset ``name`` as a config; ``overrides`` win over the preset."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic shape {name!r}: expected one of "
                         f"{', '.join(SHAPES)}")
    return SyntheticConfig(**{**SHAPES[name], **overrides})


# Random streams: 1 items, 2 clusters, 3 users, (4, block) events, 5 successor chains,
# 6 drift schedule, (7, block) sequential sessions. New draws need new stream numbers.
def _rng(config: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *stream])


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    a, b, c = (rng.integers(0, 32, n) for _ in range(3))
    pattern = rng.integers(0, 3, n)
    seen: dict[str, int] = {}
    titles = []
    for i in range(n):
        adj, noun, noun2 = _ADJECTIVES[a[i]], _NOUNS[b[i]], _NOUNS[c[i]]
        base = (f"The {adj} {noun}", f"{adj} {noun}", f"{noun} of the {adj} {noun2}")[pattern[i]]
        k = seen.get(base, 0)
        seen[base] = k + 1
        titles.append(base + (_SEQUELS[k] if k < len(_SEQUELS) else f" ({k + 1})"))
    return titles


def generate_items(config: SyntheticConfig) -> pd.DataFrame:
    """Items: item_id (1..n), title, category, tags, created_ts, popularity (sums to 1)."""
    rng = _rng(config, 1)
    n = config.n_items
    cat_idx = rng.integers(0, config.n_categories, n)
    tags = []
    for c in cat_idx:
        vocab = CATEGORIES[c][1]
        k = int(rng.integers(2, 5))
        tags.append(tuple(vocab[j] for j in sorted(rng.choice(len(vocab), k, replace=False))))
    ranks = rng.permutation(n) + 1
    weight = 1.0 / ranks.astype(np.float64) ** config.zipf_exponent
    start, end = config.start_ts, config.end_ts
    is_new = rng.random(n) < config.new_item_fraction
    new_lo = end - min(config.new_item_days, config.n_days) * 86_400
    created = np.where(
        is_new,
        new_lo + (rng.random(n) * (end - 3600 - new_lo)).astype(np.int64),
        (start - config.n_days * 86_400)
        + (rng.random(n) * (new_lo - start + config.n_days * 86_400)).astype(np.int64))
    return pd.DataFrame({
        "item_id": np.arange(1, n + 1, dtype=np.int64),
        "title": _titles(rng, n),
        "category": [CATEGORIES[c][0] for c in cat_idx],
        "tags": tags,
        "created_ts": created.astype(np.int64),
        "popularity": weight / weight.sum(),
    })


def _cluster_categories(config: SyntheticConfig) -> list[tuple[int, ...]]:
    """Cluster k prefers category k and, with several categories, one other."""
    rng = _rng(config, 2)
    n = config.n_categories
    out = []
    for k in range(n):
        if n == 1:
            out.append((0,))
        else:
            other = (k + 1 + int(rng.integers(0, n - 1))) % n
            out.append((k, other))
    return out


def generate_users(config: SyntheticConfig) -> pd.DataFrame:
    """Users: user_id (1..n), country, created_ts, clusters, categories (preferred)."""
    rng = _rng(config, 3)
    n = config.n_users
    codes = [c for c, _ in COUNTRIES]
    p = np.array([w for _, w in COUNTRIES])
    country = rng.choice(len(codes), n, p=p / p.sum())
    clusters_of = _cluster_categories(config)
    n_cat = config.n_categories
    first = rng.integers(0, n_cat, n)
    second = (first + 1 + rng.integers(0, max(n_cat - 1, 1), n)) % n_cat
    two = (rng.random(n) < 0.4) & (n_cat > 1)
    start, end = config.start_ts, config.end_ts
    joined_early = rng.random(n) < 0.8
    created = np.where(
        joined_early,
        start - 365 * 86_400 + (rng.random(n) * 365 * 86_400).astype(np.int64),
        start + (rng.random(n) * (end - 86_400 - start)).astype(np.int64))
    clusters, categories = [], []
    for a, b, both in zip(first.tolist(), second.tolist(), two.tolist(), strict=True):
        cl = (min(a, b), max(a, b)) if both else (a,)
        clusters.append(cl)
        cats = dict.fromkeys(c for k in cl for c in clusters_of[k])
        categories.append(tuple(CATEGORIES[c][0] for c in cats))
    return pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "country": [codes[c] for c in country],
        "created_ts": created.astype(np.int64),
        "clusters": clusters,
        "categories": categories,
        "activity": _activity(rng, n, config.activity_sigma, config.activity_cap),
    })


def _activity(rng: np.random.Generator, n: int, sigma: float, cap: float) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, n)
    if cap > 0:
        w = np.minimum(w, cap)
    return w / w.sum()


def successors(config: SyntheticConfig, items: pd.DataFrame) -> np.ndarray:
    """Row of each item's successor: the next item on a seeded random chain through the
    item's category (the chain's last item leads back to its first)."""
    rng = _rng(config, 5)
    cat = items["category"].to_numpy()
    succ = np.arange(len(items), dtype=np.int64)
    for name, _ in CATEGORIES[:config.n_categories]:
        idx = np.flatnonzero(cat == name)
        chain = idx[rng.permutation(len(idx))]
        succ[chain] = np.roll(chain, -1)
    return succ


def drift_schedule(config: SyntheticConfig, users: pd.DataFrame) -> pd.DataFrame:
    """Per user (rows as ``users``): user_id, drifts, switch_ts and shift. From switch_ts
    on (a seeded point in the middle half of the user's time in the event period), a
    drifting user's preferred category indexes move by ``shift`` (mod n_categories)."""
    rng = _rng(config, 6)
    n = len(users)
    drifts = (rng.random(n) < config.drift_share) & (config.n_categories > 1)
    frac = rng.uniform(0.25, 0.75, n)
    shift = rng.integers(1, max(config.n_categories, 2), n)
    active_from = np.maximum(users["created_ts"].to_numpy(), config.start_ts)
    switch = active_from + (frac * (config.end_ts - active_from)).astype(np.int64)
    return pd.DataFrame({
        "user_id": users["user_id"].to_numpy(),
        "drifts": drifts,
        "switch_ts": switch.astype(np.int64),
        "shift": np.where(drifts, shift, 0).astype(np.int64),
    })


class _Sampler:
    """Per-block event sampling over fixed items and users (all arrays, no I/O)."""

    def __init__(self, config: SyntheticConfig, items: pd.DataFrame, users: pd.DataFrame):
        self.config = config
        cat_index = {name: i for i, (name, _) in enumerate(CATEGORIES)}
        self.item_ids = items["item_id"].to_numpy()
        self.item_created = items["created_ts"].to_numpy()
        pop = items["popularity"].to_numpy()
        item_cat = np.array([cat_index[c] for c in items["category"]])
        self.global_cdf = np.cumsum(pop) / pop.sum()
        self.cat_items: list[np.ndarray] = []
        self.cat_cdf: list[np.ndarray] = []
        for c in range(config.n_categories):
            idx = np.flatnonzero(item_cat == c)
            self.cat_items.append(idx)
            self.cat_cdf.append(np.cumsum(pop[idx]) / pop[idx].sum() if len(idx) else idx)
        self.user_ids = users["user_id"].to_numpy()
        self.user_created = users["created_ts"].to_numpy()
        self.activity = users["activity"].to_numpy()
        width = max(len(c) for c in users["categories"])
        self.user_pref = np.full((len(users), width), -1, dtype=np.int64)
        self.user_npref = np.zeros(len(users), dtype=np.int64)
        for i, cats in enumerate(users["categories"]):
            usable = [cat_index[c] for c in cats if len(self.cat_items[cat_index[c]])]
            self.user_pref[i, :len(usable)] = usable
            self.user_npref[i] = len(usable)
        w = np.asarray(config.event_weights, dtype=np.float64)
        self.type_p = w / w.sum()
        self.id_seed = int(config.digest()[:15], 16)
        self.successor = successors(config, items) if config.sequential_share > 0 else None
        self.drift = drift_schedule(config, users) if config.drift_share > 0 else None

    def _in_category(self, cat: np.ndarray, r: np.ndarray, it: np.ndarray) -> np.ndarray:
        """``it`` with each row of category ``cat`` >= 0 redrawn there by popularity."""
        it = it.copy()
        for c in range(self.config.n_categories):
            mask = cat == c
            if mask.any():
                pos = np.searchsorted(self.cat_cdf[c], r[mask], side="right")
                it[mask] = self.cat_items[c][np.minimum(pos, len(self.cat_items[c]) - 1)]
        return it

    def block(self, b: int, m: int) -> pd.DataFrame:
        cfg = self.config
        rng = _rng(cfg, 4, b)
        u = rng.choice(len(self.user_ids), m, p=self.activity)
        npref = self.user_npref[u]
        preferred = (rng.random(m) < cfg.preferred_share) & (npref > 0)
        k = np.minimum((rng.random(m) * np.maximum(npref, 1)).astype(np.int64),
                       np.maximum(npref - 1, 0))
        cat = np.where(preferred, self.user_pref[u, k], -1)
        r = rng.random(m)
        it = np.minimum(np.searchsorted(self.global_cdf, r, side="right"),
                        len(self.item_ids) - 1)
        it = self._in_category(cat, r, it)
        etype = rng.choice(len(EVENT_TYPES), m, p=self.type_p)
        is_rating = etype == EVENT_TYPES.index("rating")
        noise = rng.normal(0.0, 0.9, m)
        lo = np.maximum.reduce([np.full(m, cfg.start_ts), self.item_created[it] + 1,
                                self.user_created[u]])
        ts = lo + (rng.random(m) * (cfg.end_ts - lo)).astype(np.int64)
        if self.drift is not None:
            it = self._drift(u, cat, r, it, ts)
        if self.successor is not None:
            it, ts, preferred = self._sequential(b, u, it, ts, preferred)
        mean = np.where(preferred, 4.0, 2.5)
        stars = np.clip(np.rint(mean + noise), 1, 5)
        rating = np.where(is_rating, stars, np.nan)
        index = np.arange(b * BLOCK_ROWS, b * BLOCK_ROWS + m, dtype=np.int64)
        frame = pd.DataFrame({
            "event_id": stable_ids(np.full(m, self.id_seed, dtype=np.int64), index),
            "user_id": self.user_ids[u],
            "item_id": self.item_ids[it],
            "event_type": np.array(EVENT_TYPES, dtype=object)[etype],
            "rating": rating,
            "ts": ts.astype(np.int64),
        })
        order = np.argsort(frame["ts"].to_numpy(), kind="stable")
        return frame.iloc[order].reset_index(drop=True)[list(EVENT_COLUMNS)]

    def _drift(self, u: np.ndarray, cat: np.ndarray, r: np.ndarray, it: np.ndarray,
               ts: np.ndarray) -> np.ndarray:
        """Preferred picks of drifting users from their switch on move to the shifted
        categories (same popularity quantile); a pick that would predate its item stays."""
        assert self.drift is not None
        shift = self.drift["shift"].to_numpy()[u]
        moved = (shift > 0) & (cat >= 0) & (ts >= self.drift["switch_ts"].to_numpy()[u])
        new_cat = np.where(moved, (cat + shift) % self.config.n_categories, -1)
        alt = self._in_category(new_cat, r, it)
        return np.where(ts > self.item_created[alt], alt, it)

    def _sequential(self, b: int, u: np.ndarray, it: np.ndarray, ts: np.ndarray,
                    preferred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """In each user's time order within the block, each event after the first follows
        on from the previous one with probability ``sequential_share``: its item becomes
        the previous item's successor and its time a short gap after the previous event
        (at most half-way to the user's next event, so the block's order holds and the
        session stays contiguous among the other blocks' events). A follow-on that would
        predate its item keeps the original draw; one that is kept takes the preference
        flag (for its rating) of the event that started its session."""
        assert self.successor is not None
        cfg, m = self.config, len(u)
        rng = _rng(cfg, 7, b)
        follow = rng.random(m) < cfg.sequential_share
        gap = 30 + rng.exponential(900.0, m).astype(np.int64)
        order = np.lexsort((ts, u))
        su, sts = u[order], ts[order]
        same = su[1:] == su[:-1]
        follow = follow[order]
        follow[0] = False
        follow[1:] &= same
        limit = np.full(m, cfg.end_ts, dtype=np.int64)  # the next event's original time
        limit[:-1] = np.where(same, sts[1:], cfg.end_ts)
        items, times = it[order].tolist(), sts.tolist()
        succ, created = self.successor.tolist(), self.item_created.tolist()
        gaps, limits = gap.tolist(), limit.tolist()
        chained = np.zeros(m, dtype=bool)
        for j in np.flatnonzero(follow).tolist():
            prev = times[j - 1]
            nxt, t = succ[items[j - 1]], prev + min(gaps[j], (limits[j] - prev) // 2)
            if t > prev and t > created[nxt]:
                items[j], times[j], chained[j] = nxt, t, True
        start = np.maximum.accumulate(np.where(chained, 0, np.arange(m)))
        out_it, out_ts, out_pref = np.empty_like(it), np.empty_like(ts), np.empty_like(preferred)
        out_it[order] = items
        out_ts[order] = times
        out_pref[order] = preferred[order][start]
        return out_it, out_ts, out_pref


def iter_events(config: SyntheticConfig, chunk_size: int = CHUNK_ROWS, *,
                items: pd.DataFrame | None = None,
                users: pd.DataFrame | None = None) -> Iterator[pd.DataFrame]:
    """Events as frames (:data:`EVENT_COLUMNS`) of ``chunk_size`` rows (the last may be
    shorter). The rows are the same whatever ``chunk_size``; each block of
    :data:`BLOCK_ROWS` is time-ordered."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be at least 1")
    items = generate_items(config) if items is None else items
    users = generate_users(config) if users is None else users
    sampler = _Sampler(config, items, users)
    pending: pd.DataFrame | None = None
    for b, first in enumerate(range(0, config.n_events, BLOCK_ROWS)):
        block = sampler.block(b, min(BLOCK_ROWS, config.n_events - first))
        pending = block if pending is None else pd.concat([pending, block], ignore_index=True)
        offset = 0
        while len(pending) - offset >= chunk_size:
            yield pending.iloc[offset:offset + chunk_size].reset_index(drop=True)
            offset += chunk_size
        pending = pending.iloc[offset:].reset_index(drop=True)
    if pending is not None and len(pending):
        yield pending
