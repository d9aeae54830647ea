"""The models' configurations built from the settings, and the digest that names a version.

core/settings.py holds plain values only; the jobs turn them into the models' typed
configurations here (:func:`funnel_config`, :func:`two_tower_config`). Every parameter
that shapes a model version, those configurations whole included, is hashed into the
version's config digest (:func:`digest`, ``v<date>-<digest>``) and recorded in
``model_runs.params`` (:func:`model_params`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from core.settings import Settings
from models.funnel import FunnelConfig
from models.ranker import RankerConfig
from models.rerank import RerankConfig
from models.two_tower import TwoTowerConfig

# Settings that shape a model version (the rest: where things live, serving, operations).
MODEL_KEYS = ("top_k", "similar_k", "trending_k", "trending_days", "window_days", "seed",
              "als_rank", "als_reg", "als_alpha", "als_iters", "exact_index_max_items",
              "holdout_fraction", "gate_margin", "two_tower_epochs", "two_tower_max_steps",
              "two_tower_text", "covisit_window", "covisit_top", "covisit_min_count",
              "ease_lambda", "ease_max_items", "ranker_epochs", "ranker_folds", "gate_max_users",
              "rerank_diversity", "rerank_freshness", "rerank_max_run",
              "rerank_popularity_penalty")


def two_tower_config(s: Settings) -> TwoTowerConfig:
    """The two-tower model's configuration: its defaults, the seed, the epochs and the
    training budget (settings at 0 keep the model's default)."""
    cfg = TwoTowerConfig(seed=s.seed)
    if s.two_tower_epochs:
        cfg = dataclasses.replace(cfg, epochs=s.two_tower_epochs)
    if s.two_tower_max_steps:
        cfg = dataclasses.replace(cfg, max_steps=s.two_tower_max_steps)
    return cfg


def funnel_config(s: Settings) -> FunnelConfig:
    """The funnel's configuration: EASE, the 'new' window, the ranker, the re-ranking."""
    return FunnelConfig(
        ease_lambda=s.ease_lambda, ease_max_items=s.ease_max_items,
        new_days=float(s.new_item_days), exact_max=s.exact_index_max_items,
        ranker=RankerConfig(epochs=s.ranker_epochs, seed=s.seed),
        rerank=RerankConfig(diversity=s.rerank_diversity,
                            freshness_weight=s.rerank_freshness,
                            max_run=s.rerank_max_run,
                            popularity_penalty=s.rerank_popularity_penalty))


def model_params(s: Settings) -> dict[str, Any]:
    """Parameters that shape a model version (hashed into its config digest)."""
    out: dict[str, Any] = {k: getattr(s, k) for k in MODEL_KEYS}
    # The models' own configurations, whole: a change of any of them (a two-tower
    # dimension, a ranker layer, a pool size) is a new model version.
    funnel = funnel_config(s)
    out["two_tower"] = _plain(dataclasses.asdict(two_tower_config(s)))
    out["ranker"] = _plain(dataclasses.asdict(funnel.ranker))
    out["pools"] = dataclasses.asdict(funnel.sizes)
    out["rerank"] = dataclasses.asdict(funnel.rerank)
    return out


def digest(s: Settings) -> str:
    """The config digest of a model version: 12 hex digits of the sha256 of
    :func:`model_params` as sorted JSON."""
    blob = json.dumps(model_params(s), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so that the parameters read back from JSON compare equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --- per-variant precompute (issue 13) ---------------------------------------------------

# What an experiment variant's ``changes.precompute`` may set: the lists to compute (the
# full pipeline, or one generator's own lists: the ranker off) and the re-ranking weights,
# named as their settings are.
PRECOMPUTE_KEYS = ("model", "rerank_diversity", "rerank_freshness", "rerank_max_run",
                   "rerank_popularity_penalty")
_RERANK_FIELDS = {"rerank_diversity": "diversity", "rerank_freshness": "freshness_weight",
                  "rerank_max_run": "max_run",
                  "rerank_popularity_penalty": "popularity_penalty"}


def variant_funnel(config: FunnelConfig, model: str, precompute: dict[str, Any]
                   ) -> tuple[FunnelConfig, str]:
    """The funnel configuration and model of a variant whose ``changes.precompute`` is
    ``precompute``, over the base version's; ValueError naming the key when one is
    unknown or out of range."""
    from models.generators import SOURCES

    if not isinstance(precompute, dict) or not precompute:
        raise ValueError("precompute: must be a non-empty object")
    unknown = sorted(set(precompute) - set(PRECOMPUTE_KEYS))
    if unknown:
        raise ValueError(f"precompute.{unknown[0]}: unknown; expected one of "
                         f"{', '.join(PRECOMPUTE_KEYS)}")
    model = precompute.get("model", model)
    if model != "full_pipeline" and model not in SOURCES:
        raise ValueError(f"precompute.model: {model!r} is not 'full_pipeline' or one of "
                         f"{', '.join(SOURCES)}")
    rerank = {}
    for key, field_name in _RERANK_FIELDS.items():
        if key not in precompute:
            continue
        value = precompute[key]
        want = int if key == "rerank_max_run" else (int, float)
        if isinstance(value, bool) or not isinstance(value, want):
            raise ValueError(f"precompute.{key}: {value!r} must be a number"
                             + (" (whole)" if want is int else ""))
        rerank[field_name] = value
    try:
        new_rerank = dataclasses.replace(config.rerank, **rerank)
    except ValueError as exc:
        raise ValueError(f"precompute: {exc}") from None
    return dataclasses.replace(config, rerank=new_rerank), model
