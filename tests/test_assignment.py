"""Experiment assignment: GrowthBook's published hash vectors, layers, holdout, overrides,
weights, validation and determinism across processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from models.assignment import (
    Experiment,
    Holdout,
    Variant,
    assign,
    bucket_ranges,
    choose_variation,
    fnv1a32,
    gb_hash,
    in_holdout,
    layer_position,
    validate,
)

# growthbook/growthbook packages/sdk-js/test/cases.json, "hash": [seed, value, version,
# expected]; the last row is an unknown version, for which GrowthBook returns null.
GROWTHBOOK_HASH_CASES = [
    ["", "a", 1, 0.22],
    ["", "b", 1, 0.077],
    ["b", "a", 1, 0.946],
    ["ef", "d", 1, 0.652],
    ["asdf", "8952klfjas09ujk", 1, 0.549],
    ["", "123", 1, 0.011],
    ["", "___)((*\":&", 1, 0.563],
    ["seed", "a", 2, 0.0505],
    ["seed", "b", 2, 0.2696],
    ["foo", "ab", 2, 0.2575],
    ["foo", "def", 2, 0.2019],
    ["89123klj", "8952klfjas09ujkasdf", 2, 0.124],
    ["90850943850283058242805", "123", 2, 0.7516],
    ["()**(%$##$%#$#", "___)((*\":&", 2, 0.0128],
    ["abc", "def", 99, None],
]

# The same file's "feature" cases report the bucket an experiment gave a user:
# (seed = experiment key unless given, hash attribute value, hash version, bucket).
GROWTHBOOK_BUCKETS = [
    ("feature", "123", 1, 0.863),   # "empty experiment rule - c"
    ("feature", "456", 1, 0.178),   # "empty experiment rule - a"
    ("feature", "fds", 1, 0.514),   # "empty experiment rule - b"
    ("holdout", "1", 2, 0.8043),    # "Support holdout groups"
    ("experiment", "1", 2, 0.4413),  # "Support passthrough variations"
    ("feature", "123", 2, 0.5231),  # "creates experiments properly" (seed "feature")
]

# cases.json "getBucketRange": [name, [n, coverage, weights], expected ranges].
GROWTHBOOK_RANGES = [
    ("normal 50/50", (2, 1, None), [(0, 0.5), (0.5, 1)]),
    ("reduced coverage", (2, 0.5, None), [(0, 0.25), (0.5, 0.75)]),
    ("zero coverage", (2, 0, None), [(0, 0), (0.5, 0.5)]),
    ("4 variations", (4, 1, None), [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ("uneven weights", (2, 1, [0.4, 0.6]), [(0, 0.4), (0.4, 1)]),
    ("uneven weights, 3 variations", (3, 1, [0.2, 0.3, 0.5]),
     [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
    ("uneven weights, reduced coverage, 3 variations", (3, 0.2, [0.2, 0.3, 0.5]),
     [(0, 0.04), (0.2, 0.26), (0.5, 0.6)]),
    ("negative coverage", (2, -0.2, None), [(0, 0), (0.5, 0.5)]),
    ("coverage above 1", (2, 1.5, None), [(0, 0.5), (0.5, 1)]),
    ("weights sum below 1", (2, 1, [0.4, 0.1]), [(0, 0.5), (0.5, 1)]),
    ("weights sum above 1", (2, 1, [0.7, 0.6]), [(0, 0.5), (0.5, 1)]),
    ("weights.length not equal to num variations", (4, 1, [0.4, 0.4, 0.2]),
     [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ("weights sum almost equals 1", (2, 1, [0.4, 0.5999]), [(0, 0.4), (0.4, 0.9999)]),
]

N_USERS = 200_000


def variants(*weights: float) -> tuple[Variant, ...]:
    return tuple(Variant(f"v{i}", w, {"arm": i}) for i, w in enumerate(weights))


def exp(key: str, layer: str, *weights: float, lo: float = 0.0, hi: float = 1.0,
        **kw) -> Experiment:
    kw.setdefault("status", "running")
    return Experiment(key, layer, variants(*(weights or (0.5, 0.5))), layer_range=(lo, hi),
                      **kw)


@pytest.mark.parametrize(("seed", "value", "version", "expected"), GROWTHBOOK_HASH_CASES)
def test_growthbook_hash_vectors(seed, value, version, expected):
    got = gb_hash(seed, value, version)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("seed", "value", "version", "bucket"), GROWTHBOOK_BUCKETS)
def test_growthbook_experiment_buckets(seed, value, version, bucket):
    assert gb_hash(seed, value, version) == pytest.approx(bucket, abs=1e-12)


@pytest.mark.parametrize(("name", "args", "expected"), GROWTHBOOK_RANGES,
                         ids=[c[0] for c in GROWTHBOOK_RANGES])
def test_growthbook_bucket_ranges(name, args, expected):
    got = bucket_ranges(*args)
    assert len(got) == len(expected)
    for (a, b), (c, d) in zip(got, expected, strict=True):
        assert a == pytest.approx(c, abs=1e-12) and b == pytest.approx(d, abs=1e-12)


def test_fnv1a32_reference_values():
    # FNV-1a 32 reference values (Fowler/Noll/Vo test suite): "" -> offset basis.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_choose_variation_edges():
    ranges = bucket_ranges(2, 0.5)
    assert choose_variation(0.0, ranges) == 0
    assert choose_variation(0.25, ranges) == -1  # end exclusive, outside coverage
    assert choose_variation(0.5, ranges) == 1
    assert choose_variation(0.99, ranges) == -1


def contingency(rows: list, cols: list) -> np.ndarray:
    r = {k: i for i, k in enumerate(sorted(set(rows), key=str))}
    c = {k: i for i, k in enumerate(sorted(set(cols), key=str))}
    table = np.zeros((len(r), len(c)), dtype="int64")
    for a, b in zip(rows, cols, strict=True):
        table[r[a], c[b]] += 1
    return table


def test_layers_exclusive_within_and_independent_across():
    exps = validate([
        exp("rank_a", "ranking", 0.5, 0.5, lo=0.0, hi=0.3),
        exp("rank_b", "ranking", 0.2, 0.3, 0.5, lo=0.3, hi=0.8),
        exp("cands", "candidates", 0.5, 0.5),
    ])
    in_ranking, ranking_arm, cand_arm = [], [], []
    for u in range(N_USERS):
        a = assign(u, exps, holdout=None)
        # One experiment per layer at most, by construction of the result; and the
        # ranking layer's users split between its two experiments by their ranges.
        r = a.get("ranking")
        in_ranking.append(r.experiment if r else "none")
        ranking_arm.append(f"{r.experiment}/{r.variant}" if r else "none")
        cand_arm.append(a["candidates"].variant)
    n = np.array([in_ranking.count(k) for k in ("rank_a", "rank_b", "none")])
    # Ranges 0.3 / 0.5 / 0.2 of the layer, checked by a goodness-of-fit test.
    assert stats.chisquare(n, N_USERS * np.array([0.3, 0.5, 0.2])).pvalue > 1e-3
    # Within rank_b, weights 0.2 / 0.3 / 0.5.
    b = np.array([ranking_arm.count(f"rank_b/v{i}") for i in range(3)])
    assert stats.chisquare(b, b.sum() * np.array([0.2, 0.3, 0.5])).pvalue > 1e-3
    # Independence across layers: the candidates arm does not depend on the ranking arm.
    table = contingency(ranking_arm, cand_arm)
    assert table.shape == (6, 2)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_the_independence_check_can_fail():
    """The contingency test above has power: two experiments sharing one seed in two
    layers are perfectly dependent, and the same check rejects them."""
    exps = [exp("x", "l1", salt="same"), exp("y", "l2", salt="same")]
    a1, a2 = [], []
    for u in range(20_000):
        a = assign(u, exps, holdout=None)
        a1.append(a["l1"].variant)
        a2.append(a["l2"].variant)
    assert stats.chi2_contingency(contingency(a1, a2)).pvalue < 1e-10


def test_holdout_never_sees_a_treatment():
    exps = validate([exp("e", "ranking"), exp("f", "other")])
    holdout = Holdout(fraction=0.01)
    held = [u for u in range(50_000) if in_holdout(u, holdout)]
    assert 0.008 * 50_000 < len(held) < 0.012 * 50_000
    assert all(assign(u, exps, holdout=holdout) == {} for u in held)
    others = [u for u in range(2_000) if not in_holdout(u, holdout)]
    assert all(set(assign(u, exps, holdout=holdout)) == {"ranking", "other"} for u in others)
    # The holdout is global: independent of any layer position.
    pos = np.array([layer_position(str(u), "ranking") for u in held])
    assert stats.kstest(pos, "uniform").pvalue > 1e-3


def test_override_wins_over_hash_holdout_and_range():
    exps = validate([exp("e", "ranking", lo=0.0, hi=0.1), exp("f", "other")])
    held = next(u for u in range(10_000) if in_holdout(u))
    out_of_range = next(u for u in range(10_000)
                        if not in_holdout(u) and layer_position(str(u), "ranking") >= 0.1)
    for u in (held, out_of_range):
        got = assign(u, exps, overrides={str(u): {"e": "v1"}})
        assert got["ranking"].variant == "v1" and got["ranking"].reason == "override"
        assert got["ranking"].changes == {"arm": 1}
    with pytest.raises(ValueError, match="no variant 'nope'"):
        assign(1, exps, overrides={"1": {"e": "nope"}})


def test_only_live_experiments_assign():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    exps = [exp("e", "ranking", start=t0, end=t0 + dt.timedelta(days=7)),
            exp("d", "other", status="draft")]
    assert set(assign(5, exps, holdout=None)) == {"ranking"}
    assert assign(5, exps, holdout=None, at=t0 - dt.timedelta(seconds=1)) == {}
    assert set(assign(5, exps, holdout=None, at=t0)) == {"ranking"}
    assert assign(5, exps, holdout=None, at=t0 + dt.timedelta(days=7)) == {}


def test_traffic_weights_and_extreme_weights():
    e = exp("w", "l", 0.1, 0.9)
    arms = [assign(u, [e], holdout=None)["l"].variant for u in range(50_000)]
    assert stats.binomtest(arms.count("v0"), len(arms), 0.1).pvalue > 1e-3
    zero = exp("z", "l", 0.0, 1.0)
    assert {assign(u, [zero], holdout=None)["l"].variant for u in range(2_000)} == {"v1"}


@pytest.mark.parametrize(("bad", "field"), [
    (dict(weights=(0.5, 0.4)), "variants.weight"),
    (dict(weights=(0.5, 0.5 + 1e-8)), "variants.weight"),
    (dict(weights=(1.5, -0.5)), "variants.weight"),
    (dict(weights=(1.0,)), "variants"),
    (dict(dupe=True), "variants.key"),
    (dict(lo=-0.1, hi=0.5), "layer_range"),
    (dict(lo=0.5, hi=1.2), "layer_range"),
    (dict(lo=0.5, hi=0.5), "layer_range"),
    (dict(status="paused"), "status"),
    (dict(layer=""), "layer"),
])
def test_validation_names_the_field(bad, field):
    weights = bad.pop("weights", (0.5, 0.5))
    dupe = bad.pop("dupe", False)
    e = exp("bad", bad.pop("layer", "l"), *weights, **bad)
    if dupe:
        e = Experiment("bad", "l", (Variant("a", 0.5), Variant("a", 0.5)))
    with pytest.raises(ValueError, match=f"'bad': {field}:"):
        validate([e])


def test_weights_within_tolerance_are_accepted():
    validate([exp("ok", "l", 0.1, 0.2, 0.7)])  # 0.1 + 0.2 != 0.3 in floating point
    validate([exp("ok", "l", *([1 / 3] * 3))])


def test_validation_rejects_overlap_in_a_layer_and_duplicate_keys():
    with pytest.raises(ValueError, match="layer_range.*overlaps 'a'"):
        validate([exp("a", "l", lo=0.0, hi=0.5), exp("b", "l", lo=0.4, hi=1.0)])
    validate([exp("a", "l", lo=0.0, hi=0.5), exp("b", "l", lo=0.5, hi=1.0),
              exp("c", "m", lo=0.2, hi=0.9)])
    with pytest.raises(ValueError, match="'a': key: used by two"):
        validate([exp("a", "l", lo=0.0, hi=0.5), exp("a", "m")])
    with pytest.raises(ValueError, match="end: must be after start"):
        t = dt.datetime(2026, 1, 1)
        validate([exp("a", "l", start=t, end=t)])


SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from models.assignment import Experiment, Variant, assign
V = lambda: (Variant("c", 0.5), Variant("t", 0.5))
exps = [Experiment("e1", "L1", V(), layer_range=(0, .5), status="running"),
        Experiment("e2", "L1", V(), layer_range=(.5, 1), status="running"),
        Experiment("e3", "L2", V(), status="running")]
out = {{u: {{k: [a.experiment, a.variant] for k, a in assign(u, exps).items()}}
       for u in map(str, range(500))}}
print(json.dumps(out, sort_keys=True))
"""


def test_same_answer_in_every_process():
    root = str(Path(__file__).resolve().parent.parent)
    outs = []
    for hashseed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        res = subprocess.run([sys.executable, "-c", SCRIPT.format(root=root)], env=env,
                             capture_output=True, text=True, check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == outs[2]
    assert len({tuple(v["L1"]) for v in outs[0].values() if "L1" in v}) == 4
