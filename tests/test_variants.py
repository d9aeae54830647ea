"""Per-variant precompute (jobs/variants.py): a running experiment whose treatment changes
how lists are computed gets its own lists, for its users only, published as a variant
version of the live version; the reader serves them to those users; they retire with
their base. Against a version built and published by the daily steps on small synthetic
data (tests/test_nearline.py:make_live), Spark on ``local[2]``, real Postgres."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from core import db, lake
from jobs import experiments as registry
from jobs.configs import PRECOMPUTE_KEYS
from models.assignment import Experiment, Holdout, Variant, VariantUsers, assign
from tests.test_experiments_serve import close, reader
from tests.test_nearline import make_live, sql

TREATMENT = {"precompute": {"model": "als", "rerank_diversity": 0.5}}


def _definition(changes: dict) -> Experiment:
    return registry.build("div", variants=[registry.Variant("control", 0.5),
                                           registry.Variant("treatment", 0.5, changes)])


@pytest.mark.parametrize("changes, why", [
    ({"precompute": {}}, "non-empty object"),
    ({"precompute": "als"}, "non-empty object"),
    ({"precompute": {"ranker": False}}, "precompute.ranker: unknown"),
    ({"precompute": {"model": "magic"}}, "precompute.model: 'magic'"),
    ({"precompute": {"rerank_diversity": 2}}, "diversity must be in [0, 1]"),
    ({"precompute": {"rerank_max_run": 1.5}}, "precompute.rerank_max_run: 1.5 must be"),
    ({"precompute": {"rerank_freshness": True}}, "precompute.rerank_freshness: True"),
    ({"precompute": {"model": "als"}, "model_version": "v1"}, "both a model_version"),
])
def test_bad_precompute_changes_are_refused_naming_the_field(changes, why):
    with pytest.raises(registry.ExperimentError) as err:
        registry.check_definition(_definition(changes), "ab")
    assert "variants.changes.precompute" in str(err.value) and why in str(err.value), \
        str(err.value)


def test_every_precompute_key_is_accepted():
    registry.check_definition(_definition({"precompute": {
        "model": "full_pipeline", "rerank_diversity": 0.3, "rerank_freshness": 0.1,
        "rerank_max_run": 3, "rerank_popularity_penalty": 0.2}}), "ab")
    assert len(PRECOMPUTE_KEYS) == 5


def test_variant_users_are_those_assign_gives_the_variant():
    exp = Experiment("div", "default", (Variant("control", 0.5), Variant("treatment", 0.5,
                                                                         TREATMENT)),
                     status="running")
    other = Experiment("other", "ranking", (Variant("a", 0.5), Variant("b", 0.5)),
                       status="running")
    overrides = {"17": {"div": "treatment"}, "18": {"div": "control"}}
    only = VariantUsers((exp, other), "div", "treatment", Holdout(0.05), overrides)
    users = list(range(3000))
    want = [any(a.experiment == "div" and a.variant == "treatment" for a in
                assign(u, (exp, other), holdout=Holdout(0.05), overrides=overrides).values())
            for u in users]
    assert only.mask(users) == want
    assert 0.4 * 3000 < sum(want) < 0.5 * 3000  # half of the 95% outside the holdout
    assert 17 in only and 18 not in only
    assert pickle.loads(pickle.dumps(only)) == only  # shipped to Spark executors
    with pytest.raises(ValueError, match="no variant 'nope'"):
        VariantUsers((exp,), "div", "nope")


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_SPARK_MASTER", "local[2]")
    yield from make_live(dsn, tmp_path, monkeypatch)


def _lists(dsn: str, version: str) -> dict[int, list[int]]:
    return {u: list(items) for u, items in sql(
        dsn, "SELECT user_id, items FROM recommendations WHERE model_version = %s",
        (version,))}


@pytest.mark.spark
def test_a_precompute_variant_gets_its_users_lists_served_and_retired(live, settings,
                                                                      tmp_path):
    from jobs import publish, spark_funnel, variants
    from jobs.configs import funnel_config, variant_funnel
    from jobs.precompute import load_rules

    dsn, base = live["dsn"], live["version"]
    registry.create(dsn, _definition(TREATMENT))
    registry.start(dsn, "div")
    registry.set_override(dsn, "div", 3, "treatment")  # QA sees the treatment's lists

    out = variants.run()
    name = variants.version_name(base, "div", "treatment")
    (done,) = out["variants"]
    assert out["version"] == base and done["version"] == name and done["model"] == "als"
    # Exactly the treatment's users among those the live version has lists for.
    live_lists, lists = _lists(dsn, base), _lists(dsn, name)
    with db.transaction(dsn) as cur:
        experiments = tuple(x.experiment for x in registry.running_experiments(cur))
    only = VariantUsers(experiments, "div", "treatment",
                        Holdout(settings.experiment_holdout_fraction),
                        {"3": {"div": "treatment"}})
    want = {u for u in live_lists if u in only}
    assert set(lists) == want and 3 in want and 0.3 < len(want) / len(live_lists) < 0.7
    assert done["rows"] == len(want)
    # The variant's configuration made other lists.
    assert sum(lists[u] != live_lists[u] for u in want) > 0.5 * len(want)
    (kind, status, params), = sql(dsn, "SELECT kind, status, params FROM model_runs "
                                       "WHERE model_version = %s", (name,))
    assert (kind, status) == ("variant", "published")
    assert params["base_version"] == base and params["precompute"] == TREATMENT["precompute"]

    # The same lists as computing every user with the variant's configuration.
    (arts, model, day), = sql(dsn, "SELECT artifacts, metrics->'published_model'->>'name', "
                                   "logical_date FROM model_runs WHERE model_version = %s",
                              (base,))
    cfg, variant_model = variant_funnel(funnel_config(settings), model,
                                        TREATMENT["precompute"])
    spark = spark_funnel.session("local[2]")
    try:
        spark_funnel.run(
            spark, catalog_dir=str(lake.partition("funnel_catalog", day)),
            pairs_path=arts["pairs"], users_path=arts.get("users"),
            als_dir=f"{arts['als']}/full", two_tower_dir=f"{arts['two_tower']}/full",
            ranker_dir=arts["ranker"], items_path=arts["items"], model=variant_model,
            config=cfg, rules=load_rules(pd.read_parquet(arts["items"])),
            top_k=settings.top_k, out_dir=str(tmp_path / "everyone"))
    finally:
        spark.stop()
    everyone = pd.read_parquet(tmp_path / "everyone")
    assert {u: list(i) for u, i in zip(everyone["user_id"], everyone["items"], strict=True)
            if u in want} == lists

    # A re-run publishes nothing new.
    again = variants.run()
    assert again["variants"][0]["skipped"] == "already published"
    assert len(_lists(dsn, name)) == len(want)

    # The reader: a treatment user gets the variant's list, a control user the live one,
    # the other types of a treatment user come from the live version.
    app, client = reader(settings, dsn, exploration_rate=0.0)
    try:
        treated = min(want - {3})
        control = min(u for u in live_lists if u not in only and
                      assign(u, experiments, holdout=Holdout(
                          settings.experiment_holdout_fraction)))
        body = client.get(f"/api/v1/recommendations/{treated}?limit=5").get_json()
        assert (body["variant"], body["model_version"]) == ("treatment", name)
        assert [x["item_id"] for x in body["recommendations"]] == lists[treated][:5]
        body = client.get(f"/api/v1/recommendations/{control}?limit=5").get_json()
        assert (body["variant"], body["model_version"]) == ("control", base)
        assert [x["item_id"] for x in body["recommendations"]] == live_lists[control][:5]
        body = client.get(f"/api/v1/recommendations/{treated}?type=trending").get_json()
        assert body["model_version"] == base and not body["fallback"]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "experiment_version_gone" not in metrics
        assert "experiment_variant_missing" not in metrics
    finally:
        close(app)

    # Retired with its base: kept while the base is kept, gone once it is not.
    publish.retire(keep=1)
    assert len(_lists(dsn, name)) == len(want)
    sql(dsn, "UPDATE model_runs SET params = jsonb_set(params, '{base_version}', "
             "'\"v20000101-gone\"') WHERE model_version = %s", (name,))
    assert name in publish.retire(keep=1)["retired"]
    assert _lists(dsn, name) == {}
    assert sql(dsn, "SELECT status FROM model_runs WHERE model_version = %s",
               (name,)) == [("retired",)]
    assert _lists(dsn, base) == live_lists  # the base untouched
