"""Re-ranking of one ranked list: business rules, diversity and freshness (pure compute).

Order of operations, for one user's ranked candidates:

1. **Rules**: drop blocked items, items of blocked categories and items failing the
   content policy; drop consumed items.
2. **Long tail**: with ``popularity_penalty`` > 0, relevance becomes the score's z-score
   over the list minus ``popularity_penalty`` x the item's popularity percentile in the
   list (0 least, 1 most popular), which widens catalog coverage at little cost.
   **Freshness**: add ``freshness_weight * exp(-age_days / freshness_days)``.
3. **MMR**: pick greedily by ``(1 - diversity) * relevance - diversity * max_sim``, where
   ``max_sim`` is the largest similarity to an item already picked (0 for the first).
4. **No three in a row**: an item whose category equals the two items before it waits
   for the first later position where it fits (a list of one category stays as it is).
5. **Pins**: pinned items go to their slots (1-based), whatever their score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Rules:
    """Business rules, from a table or a file (see :func:`rules_from_rows`)."""

    blocked_items: frozenset[int] = frozenset()
    blocked_categories: frozenset[str] = frozenset()
    pins: Mapping[int, int] = field(default_factory=dict)  # item_id -> 1-based slot
    policy: Callable[[int], bool] | None = None  # False: the item may not be shown


@dataclass(frozen=True)
class RerankConfig:
    diversity: float = 0.2  # 0: relevance only; 1: diversity only
    freshness_weight: float = 0.0
    freshness_days: float = 7.0
    max_run: int = 2  # at most this many items of one category in a row
    popularity_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.popularity_penalty < 0:
            raise ValueError(f"popularity_penalty must be >= 0, got {self.popularity_penalty}")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {self.diversity}")
        if self.max_run < 1:
            raise ValueError(f"max_run must be >= 1, got {self.max_run}")
        if self.freshness_days <= 0:
            raise ValueError("freshness_days must be > 0")


def rules_from_rows(rows: Sequence[tuple[str, str, int | None]]) -> Rules:
    """Rules from (kind, value, slot) rows: kind is 'block_item', 'block_category' or
    'pin' (value = item id, slot = 1-based position). Unknown kinds are an error."""
    items, cats, pins = set(), set(), {}
    for n, (kind, value, slot) in enumerate(rows, start=1):
        if kind == "block_item":
            items.add(int(value))
        elif kind == "block_category":
            cats.add(str(value))
        elif kind == "pin":
            if slot is None or int(slot) < 1:
                raise ValueError(f"rule {n}: pin of item {value} needs a slot >= 1")
            pins[int(value)] = int(slot)
        else:
            raise ValueError(f"rule {n}: unknown kind {kind!r}")
    return Rules(frozenset(items), frozenset(cats), pins)


def rerank(items: np.ndarray, scores: np.ndarray, categories: Sequence[str | None],
           k: int, *, config: RerankConfig = RerankConfig(), rules: Rules = Rules(),
           vectors: np.ndarray | None = None, age_days: np.ndarray | None = None,
           consumed: frozenset[int] = frozenset(),
           popularity: np.ndarray | None = None) -> list[int]:
    """Positions (into ``items``) of the re-ranked top ``k``."""
    n = len(items)
    keep = []
    for i in range(n):
        item = int(items[i])
        if (item in consumed or item in rules.blocked_items
                or categories[i] in rules.blocked_categories
                or (rules.policy is not None and not rules.policy(item))):
            continue
        keep.append(i)
    rel = np.asarray(scores, dtype="float64").copy()
    if config.popularity_penalty and popularity is not None and n > 1:
        rel = _long_tail(rel, np.asarray(popularity, dtype="float64"),
                         config.popularity_penalty)
    if config.freshness_weight and age_days is not None:
        rel += config.freshness_weight * np.exp(-np.asarray(age_days) / config.freshness_days)
    pinned = {i for i in keep if int(items[i]) in rules.pins}
    pool = [i for i in keep if i not in pinned]
    chosen = _mmr(pool, rel, vectors, config.diversity, k)
    chosen = _limit_runs(chosen, categories, config.max_run)
    for i in sorted(pinned, key=lambda i: rules.pins[int(items[i])]):
        chosen.insert(min(rules.pins[int(items[i])] - 1, len(chosen)), i)
    return chosen[:k]


def _long_tail(rel: np.ndarray, popularity: np.ndarray, penalty: float) -> np.ndarray:
    """z-score of the finite scores minus ``penalty`` x popularity percentile."""
    ok = np.isfinite(rel)
    out = rel.copy()
    if ok.sum() < 2:
        return out
    sd = rel[ok].std()
    out[ok] = (rel[ok] - rel[ok].mean()) / (sd if sd > 0 else 1.0)
    ranks = np.argsort(np.argsort(popularity, kind="stable"), kind="stable")
    out[ok] -= penalty * (ranks[ok] / max(len(rel) - 1, 1))
    return out


def _mmr(pool: list[int], rel: np.ndarray, vectors: np.ndarray | None, diversity: float,
         k: int) -> list[int]:
    if vectors is None or diversity == 0.0 or not pool:
        return sorted(pool, key=lambda i: -rel[i])
    v = np.asarray(vectors, dtype="float64")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms == 0, 1.0, norms)
    r = rel[pool]
    span = r.max() - r.min()
    r = (r - r.min()) / span if span > 0 else np.zeros_like(r)  # relevance on [0, 1]
    sims = unit[pool] @ unit[pool].T
    picked: list[int] = []
    max_sim = np.zeros(len(pool))
    left = np.ones(len(pool), dtype=bool)
    for _ in range(len(pool)):
        gain = (1 - diversity) * r - diversity * max_sim
        gain[~left] = -np.inf
        j = int(np.argmax(gain))
        picked.append(pool[j])
        left[j] = False
        max_sim = np.maximum(max_sim, sims[j])
    return picked


def _limit_runs(order: list[int], categories: Sequence[str | None], max_run: int) -> list[int]:
    out: list[int] = []
    waiting = list(order)
    while waiting:
        for idx, i in enumerate(waiting):
            cat = categories[i]
            run = 0
            for prev in reversed(out):
                if cat is not None and categories[prev] == cat:
                    run += 1
                else:
                    break
            if run < max_run:
                out.append(waiting.pop(idx))
                break
        else:  # nothing fits: keep the order of what is left
            out.extend(waiting)
            break
    return out
