"""Re-ranking rules: blocks, pins, policy, MMR diversity, freshness, no three in a row."""

from __future__ import annotations

import numpy as np
import pytest

from models.rerank import RerankConfig, Rules, rerank, rules_from_rows

ITEMS = np.array([10, 11, 12, 13, 14, 15])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
CATS = ["a", "a", "a", "b", "b", "c"]


def ids(pos):
    return [int(ITEMS[p]) for p in pos]


def test_no_three_of_one_category_in_a_row():
    got = ids(rerank(ITEMS, SCORES, CATS, 6, config=RerankConfig(diversity=0.0)))
    assert got == [10, 11, 13, 12, 14, 15]
    for a, b, c in zip(got, got[1:], got[2:], strict=False):
        cats = {CATS[list(ITEMS).index(x)] for x in (a, b, c)}
        assert len(cats) > 1


def test_single_category_list_is_kept_in_order():
    got = rerank(ITEMS[:3], SCORES[:3], ["a"] * 3, 3, config=RerankConfig(diversity=0.0))
    assert list(got) == [0, 1, 2]


def test_blocks_policy_consumed_and_pins():
    rules = Rules(blocked_items=frozenset({11}), blocked_categories=frozenset({"c"}),
                  pins={14: 1}, policy=lambda item: item != 12)
    got = ids(rerank(ITEMS, SCORES, CATS, 6, config=RerankConfig(diversity=0.0),
                     rules=rules, consumed=frozenset({13})))
    assert got == [14, 10]


def test_mmr_trades_relevance_for_diversity():
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [0, 1], [0.7, 0.7]], float)
    plain = ids(rerank(ITEMS, SCORES, ["x"] * 6, 3, config=RerankConfig(diversity=0.0),
                       vectors=vectors))
    diverse = ids(rerank(ITEMS, SCORES, ["x"] * 6, 3, config=RerankConfig(diversity=0.7),
                         vectors=vectors))
    assert plain == [10, 11, 12]
    assert diverse[0] == 10 and 13 in diverse


def test_freshness_boost_lifts_new_items():
    age = np.array([100, 100, 100, 100, 100, 0.0])
    got = ids(rerank(ITEMS, SCORES, ["x"] * 6, 2, config=RerankConfig(
        diversity=0.0, freshness_weight=1.0), age_days=age))
    assert got[0] == 15


def test_rules_from_rows_and_bad_rows():
    rules = rules_from_rows([("block_item", "5", None), ("block_category", "Horror", None),
                             ("pin", "7", 2)])
    assert rules.blocked_items == {5} and rules.blocked_categories == {"Horror"}
    assert rules.pins == {7: 2}
    with pytest.raises(ValueError, match="rule 1: unknown kind"):
        rules_from_rows([("boost", "1", None)])
    with pytest.raises(ValueError, match="needs a slot"):
        rules_from_rows([("pin", "1", None)])
    with pytest.raises(ValueError, match="diversity"):
        RerankConfig(diversity=2.0)


def test_popularity_penalty_lets_a_close_long_tail_item_pass_a_popular_one():
    items = np.array([1, 2, 3, 4])
    scores = np.array([1.00, 0.98, 0.50, 0.10])
    popularity = np.array([900.0, 5.0, 50.0, 1.0])
    cats = ["a", "b", "c", "d"]
    plain = rerank(items, scores, cats, 4, config=RerankConfig(diversity=0.0),
                   popularity=popularity)
    assert plain == [0, 1, 2, 3]  # no penalty: the scores' order
    tail = rerank(items, scores, cats, 4,
                  config=RerankConfig(diversity=0.0, popularity_penalty=0.3),
                  popularity=popularity)
    assert tail == [1, 0, 2, 3]  # 0.02 apart: the rarer item first; far apart: unchanged
    with pytest.raises(ValueError, match="popularity_penalty"):
        RerankConfig(popularity_penalty=-0.1)
