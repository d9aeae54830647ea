"""The published lists: re-ranking and a true reason per item (pure compute).

:func:`final_lists` takes the ranked candidates (models/funnel.py:rank_users, or one
generator's own lists) through the re-ranking (models/rerank.py: rules, diversity,
freshness, popularity penalty, no more than ``max_run`` of a category in a row) and gives
every item its reason (:func:`reason_for`): the generator that placed it best names the
kind ("Trending in Comedy", "Popular in DE", "New in Drama"), and a similarity pick names
the item of the user's history it is most similar to (:func:`history_similarity`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import NO_REASON_ITEM
from models.funnel import Ranked
from models.generators import SOURCES
from models.rerank import RerankConfig, Rules, rerank
from models.signals import Signals


def reason_for(sig: Signals, user: int, item: int, source: int,
               titles, sim: np.ndarray | None) -> tuple[str, int]:
    """(reason, reason_item_id) for one recommended item; ``NO_REASON_ITEM`` (-1) when the
    reason names no item (the reader and the analyst view answer null for it)."""
    if source < 0:
        return "Featured", NO_REASON_ITEM
    name = SOURCES[source]
    cat = sig.category[item]
    cat_name = sig.category_names[cat] if cat >= 0 else None
    hist = sig.history[user]
    if name == "trending" and cat_name:
        return f"Trending in {cat_name}", NO_REASON_ITEM
    if name == "new" and cat_name:
        return f"New in {cat_name}", NO_REASON_ITEM
    if name == "country" and sig.user_country is not None and sig.user_country[user] >= 0:
        return f"Popular in {sig.country_names[sig.user_country[user]]}", NO_REASON_ITEM
    if len(hist) and sim is not None and sim.max() > 0:
        best = int(hist[int(np.argmax(sim))])
        iid = int(sig.item_ids[best])
        title = titles.get(iid, str(iid))
        if name == "text":
            return f"Similar to {title}", iid
        return f"Because you watched {title}", iid
    if name == "trending":
        return "Trending now", NO_REASON_ITEM
    return "Recommended for you", NO_REASON_ITEM


def history_similarity(sig: Signals, user: int, items: np.ndarray,
                       source: np.ndarray) -> list[np.ndarray | None]:
    """Per item: its similarity to each history item (the measure behind its reason):
    text cosine for text picks, else co-visitation plus 1e-3 x ALS cosine (text cosine
    for an item without an ALS vector), which breaks ties and zeros."""
    hist = sig.history[user]
    if not len(hist):
        return [None] * len(items)
    unit_als = sig.als_unit
    co = sig.covisit[hist][:, items].toarray().T if sig.covisit is not None else \
        np.zeros((len(items), len(hist)), "float32")
    als = unit_als[items] @ unit_als[hist].T if unit_als is not None else None
    txt = sig.text[items] @ sig.text[hist].T if sig.text is not None else None
    out = []
    for n, (item, src) in enumerate(zip(items, source, strict=True)):
        if src >= 0 and SOURCES[src] == "text" and txt is not None:
            out.append(txt[n])
            continue
        s = co[n].astype("float32")
        if als is not None and unit_als[item].any():
            s = s + 1e-3 * als[n]
        elif txt is not None:
            s = s + 1e-3 * txt[n]
        out.append(s)
    return out


def final_lists(sig: Signals, ranked: Ranked, titles: pd.Series, k: int, *,
                config: RerankConfig, rules: Rules = Rules(), with_reasons: bool = True
                ) -> pd.DataFrame:
    """Re-ranked top ``k`` per user with reasons: the published list layout.

    Matrix products run on one BLAS thread, as in models/funnel.py:rank_users: a reason
    must not depend on the machine's cores, and small products on several threads cost
    far more than on one when the cores are busy (14 ms against 0.04 ms measured)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _final_lists(sig, ranked, titles, k, config=config, rules=rules,
                            with_reasons=with_reasons)


def _final_lists(sig: Signals, ranked: Ranked, titles: pd.Series, k: int, *,
                 config: RerankConfig, rules: Rules, with_reasons: bool) -> pd.DataFrame:
    cats = [sig.category_names[c] if c >= 0 else None for c in sig.category]
    pin_rows = pd.Index(sig.item_ids).get_indexer(list(rules.pins))
    pin_rows = pin_rows[pin_rows >= 0]
    titles = titles[~titles.index.duplicated()].to_dict()
    records = []
    for n, u in enumerate(ranked.users):
        items, scores, source = ranked.items[n], ranked.scores[n], ranked.source[n]
        extra = pin_rows[~np.isin(pin_rows, items)]
        if len(extra):  # a pinned item goes into every list, found by a generator or not
            items = np.concatenate([items, extra])
            scores = np.concatenate([scores, np.full(len(extra), -np.inf, "float32")])
            source = np.concatenate([source, np.full(len(extra), -1)])
        vectors = sig.text[items] if sig.text is not None and config.diversity else None
        pos = rerank(sig.item_ids[items], scores, [cats[i] for i in items], k,
                     config=config, rules=rules, vectors=vectors,
                     age_days=sig.age_days[items],
                     consumed=frozenset(sig.item_ids[sig.history[u]].tolist()),
                     popularity=sig.popularity[items])
        items, scores, source = items[pos], scores[pos], source[pos]
        if with_reasons:
            sims = history_similarity(sig, u, items, source)
            why = [reason_for(sig, u, i, s, titles, m)
                   for i, s, m in zip(items, source, sims, strict=True)]
        else:
            why = [("", NO_REASON_ITEM)] * len(items)
        records.append((int(sig.user_ids[u]), sig.item_ids[items].astype("int64"),
                        scores.astype("float32"), [w[0] for w in why],
                        np.array([w[1] for w in why], "int64"),
                        [SOURCES[s] if s >= 0 else "pin" for s in source],
                        sig.item_ids[sig.history[u][:10]].astype("int64")))
    return pd.DataFrame(records, columns=["user_id", "items", "scores", "reasons",
                                          "reason_item_ids", "sources", "history_tail"])
