"""Per-variant precompute (issue 13): the lists of an experiment variant that changes how
lists are computed, for that variant's users only.

A variant's ``changes.precompute`` (``recs experiments create ... --variant
'treatment=0.5:{"precompute": {"rerank_diversity": 0.5}}'``) names what it computes
differently from the live version (jobs/configs.py:PRECOMPUTE_KEYS: the model, i.e. the
full pipeline or one generator's lists, and the re-ranking weights). After each publish,
:func:`run` computes, for every such variant of every running experiment, the lists of the
users that ``models.assignment`` puts in it (by hash, or by a QA override) with the live
version's artefacts (catalog signals, factors, ranker) and the variant's configuration,
in the same Spark job as the daily funnel (jobs/spark_funnel.py, its users filtered before
the shuffle), so the cost grows with the variant's share of the traffic and not with the
number of variants. The lists are checked and published as a *variant version*
``<live version>-x<8 hex digits of sha256(key/variant)>``: a ``model_runs`` row of kind
``variant`` (``params``: base_version, experiment, variant, precompute) and a
``recommendations`` partition with those users' rows only, attached without blocking
readers. The reader (serve/experiments.py) serves a variant user from the variant version
of the live version, the similar and trending types from the live version itself.

A variant version is retired with its base version (jobs/publish.py). Re-running a day
skips the variant versions already published (same inputs, same lists).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import Path

import pandas as pd

from core import db, lake
from core import settings as settings_mod
from jobs import experiments as registry
from jobs import publish
from jobs.configs import funnel_config, variant_funnel
from models.assignment import Experiment, Holdout, VariantUsers

log = logging.getLogger("recs.variants")

VARIANT_KIND = "variant"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A variant to precompute: experiment key, variant key, its ``precompute`` object."""

    key: str
    variant: str
    precompute: dict


def version_name(base: str, key: str, variant: str) -> str:
    """The variant version of ``base`` for ``key``/``variant`` (at most 40 characters,
    as ``model_runs.model_version``)."""
    tag = hashlib.sha256(f"{key}/{variant}".encode()).hexdigest()[:8]
    name = f"{base}-x{tag}"
    if len(name) > 40:
        raise ValueError(f"{base!r}: too long a version name for a variant version")
    return name


def running(cur) -> tuple[tuple[Experiment, ...], dict[str, dict[str, str]], list[Spec]]:
    """The running experiments, their QA overrides (``{user: {key: variant}}``) and the
    variants with a ``precompute`` change, in key order."""
    stored = registry.running_experiments(cur)
    experiments = tuple(s.experiment for s in stored)
    overrides: dict[str, dict[str, str]] = {}
    specs = []
    for e in experiments:
        for user, variant in registry.overrides(cur, e.key).items():
            overrides.setdefault(str(user), {})[e.key] = variant
        for v in e.variants:
            if "precompute" in v.changes:
                specs.append(Spec(e.key, v.key, dict(v.changes["precompute"])))
    return experiments, overrides, specs


def run(*, version: str | None = None, dsn: str | None = None,
        lake_root: Path | None = None) -> dict:
    """Precompute and publish the variant versions of ``version`` (default: the live
    one). Nothing to do without a running experiment that has a ``precompute`` variant."""
    from jobs import spark_funnel
    from jobs.precompute import load_rules

    s = settings_mod.get()
    with db.transaction(dsn) as cur:
        if version is None:
            cur.execute("SELECT live_version FROM serving_state")
            version = cur.fetchone()[0]
        experiments, overrides, specs = running(cur)
        if version is None or not specs:
            return {"version": version, "variants": []}
        cur.execute("SELECT artifacts, metrics->'published_model'->>'name', logical_date, "
                    "data_until, status FROM model_runs WHERE model_version = %s",
                    (version,))
        row = cur.fetchone()
        cur.execute("SELECT model_version FROM model_runs WHERE kind = %s AND status = "
                    "'published' AND params->>'base_version' = %s", (VARIANT_KIND, version))
        done = {v for (v,) in cur.fetchall()}
    if row is None or row[4] != "published":
        raise ValueError(f"{version}: not a published version "
                         f"({'missing' if row is None else row[4]})")
    arts, model, day, data_until, _ = row
    catalog = lake.partition("funnel_catalog", day, lake_root)
    if not catalog.exists():
        raise FileNotFoundError(f"{catalog}: the funnel catalog of {version} is gone from "
                                "the lake; re-run that day's daily pipeline")
    holdout = Holdout(fraction=s.experiment_holdout_fraction)
    out: list[dict] = []
    todo = [sp for sp in specs
            if version_name(version, sp.key, sp.variant) not in done]
    for sp in specs:
        if sp not in todo:
            out.append({"experiment": sp.key, "variant": sp.variant, "skipped":
                        "already published", "version": version_name(version, sp.key,
                                                                     sp.variant)})
    if not todo:
        return {"version": version, "variants": out}
    items = pd.read_parquet(arts["items"])
    rules = load_rules(items, dsn)
    spark = spark_funnel.session(s.spark_master, s.spark_driver_memory)
    try:
        for sp in todo:
            t0 = time.perf_counter()
            name = version_name(version, sp.key, sp.variant)
            config, variant_model = variant_funnel(funnel_config(s), model or "full_pipeline",
                                                   sp.precompute)
            only = VariantUsers(experiments, sp.key, sp.variant, holdout, overrides)
            target = lake.partition("variant_lists", day, lake_root) / name
            job = spark_funnel.run(
                spark, catalog_dir=str(catalog), pairs_path=arts["pairs"],
                users_path=arts.get("users"), als_dir=str(Path(arts["als"]) / "full"),
                two_tower_dir=str(Path(arts["two_tower"]) / "full"),
                ranker_dir=arts.get("ranker"), items_path=arts["items"],
                model=variant_model, config=config, rules=rules, top_k=s.top_k,
                out_dir=str(target), only=only)
            pub = publish_variant(name, base=version, spec=sp, lists=target, only=only,
                                  pairs_path=arts["pairs"], day=day, data_until=data_until,
                                  model=variant_model, dsn=dsn)
            log.info("variant %s/%s: %d lists published as %s in %.1fs", sp.key,
                     sp.variant, pub["rows"], name, time.perf_counter() - t0)
            out.append({"experiment": sp.key, "variant": sp.variant, "version": name,
                        "model": variant_model, "users": job["n_users"], **pub})
    finally:
        spark.stop()
    return {"version": version, "variants": out}


def publish_variant(name: str, *, base: str, spec: Spec, lists: Path, only: VariantUsers,
                    pairs_path: str, day: dt.date, data_until, model: str,
                    dsn: str | None = None) -> dict:
    """Check the variant's lists (those of jobs/publish.py: coverage of the variant's
    users with pairs, no duplicate, finite scores, nothing consumed; block rules applied)
    and publish them as ``name`` in one transaction: COPY into a new table, attach it as
    ``recommendations``' partition (SHARE UPDATE EXCLUSIVE: readers go on), record the
    model run. Nothing is visible before the commit."""
    from jobs import rules as rules_mod

    s = settings_mod.get()
    units = publish.list_units(lists)
    pairs = pd.read_parquet(pairs_path, columns=["user_id", "item_id"])
    pairs = pairs[only.mask(pairs["user_id"].tolist())]
    no_sims = pd.DataFrame({"items": pd.Series([], dtype=object),
                            "scores": pd.Series([], dtype=object)})
    computed_at = dt.datetime.now(dt.UTC)
    conn = db.connect(dsn)
    try:
        with db.advisory_lock(conn, publish.PUBLISH_LOCK):
            blocked = rules_mod.blocked_items(conn, s.rules_file or None)
            checks, removed = publish.check_lake_lists(units, no_sims, pairs, blocked)
            rows = checks.pop("rows")
            checks["blocked_removed"] = removed
            with conn, conn.cursor() as cur:
                cur.execute(f"SET LOCAL lock_timeout = {int(s.publish_lock_timeout_ms)}")
                new = f"recommendations_{publish._suffix(name)}"
                cur.execute(f"CREATE TABLE {new} (LIKE recommendations INCLUDING DEFAULTS)")
                cur.execute(f"COMMENT ON TABLE {new} IS %s", (publish.STAGED_COMMENT + name,))
                copied = publish._copy_lake_lists(cur, new, units, blocked, name, computed_at)
                if copied != rows:
                    raise publish.PublishError(f"{name}: rows copied differ from the rows "
                                               "checked")
                cur.execute(f"ALTER TABLE {new} ADD CONSTRAINT {new}_v CHECK "
                            "(model_version = %s)", (name,))
                cur.execute(f"ALTER TABLE {new} ADD PRIMARY KEY (model_version, user_id)")
                cur.execute(f"ALTER TABLE recommendations ATTACH PARTITION {new} "
                            "FOR VALUES IN (%s)", (name,))
                cur.execute(f"COMMENT ON TABLE {new} IS NULL")
                params = {"base_version": base, "experiment": spec.key,
                          "variant": spec.variant, "precompute": spec.precompute,
                          "model": model}
                cur.execute(
                    "INSERT INTO model_runs (model_version, kind, logical_date, params, "
                    "data_until, n_users, metrics, artifacts, status, finished_at, "
                    "published_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'published', "
                    "now(), now())",
                    (name, VARIANT_KIND, day, json.dumps(params), data_until, copied,
                     json.dumps({"publish": checks}),
                     json.dumps({"recommendations": str(lists)})))
    finally:
        conn.close()
    return {"rows": copied, "checks": checks}
