"""Read endpoints: per-user recommendations, similar items, trending.

Each request is one SQL round trip (serve/store.py) plus in-memory work: real-time
exclusion of what the user touched since the lists were computed, "Because you watched
X" blending of the similar items of those recent items (and, on a product page, of the
page's item first), and top-up from the popular list of the same version. When the
database is down or too slow, the answer comes from the in-memory popular list
(``fallback: true``, ``source: "memory"``). Every fallback is counted by cause in
``recs_fallbacks_total`` (serve/metrics.py).

No answer shows a blocked item (serve/blocks.py): every list, blended item and top-up is
checked against the process's cached block set through :class:`Exclusions`.

Experiments (serve/experiments.py): on ``/api/v1/recommendations/{user_id}`` the user is
routed per request (no query: the running experiments are cached per process); their
variant may pin another kept version, turn blending off or change the exploration rate,
and an interleaving experiment serves one team-draft list of its variants' lists. The
list's top ``exploration_top_k`` items are shuffled with probability ``exploration_rate``
(models/exploration.py). Every answer carries a new ``request_id`` (also in the
``X-Request-Id`` header); each list served for a user is put on the exposure log
(serve/exposures.py) with its experiment, variant, version, items, propensities and
teams. ``/api/v1/similar`` and ``/api/v1/trending`` name no user: they are not routed
and not logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg2
from flask import Blueprint, Response, g, jsonify, request

from core.constants import POPULAR_REASON
from models.exploration import explore
from models.interleaving import multileave, request_rng
from serve import validation
from serve.app import services
from serve.errors import ApiError, bad_request
from serve.experiments import Route
from serve.exposures import Exposure
from serve.fallback import PopularList
from serve.store import (
    ANCHORS,
    DatabaseUnavailable,
    ListRead,
    Pin,
    PreferencesRead,
    UserRead,
)

log = logging.getLogger(__name__)

bp = Blueprint("recommendations", __name__)

BLEND_PER_ANCHOR = 2
# At most this many list items are read beyond the answer's needs for blocked items.
BLOCKED_SPARE = 50
WATCHED_REASON = "Because you watched {title}"
PAGE_REASON = "Similar to {title}"

Entry = dict[str, Any]


class Exclusions:
    """Items an answer must not show: the request's own (which grows as items are taken)
    and the blocked ones (the process's shared set, never copied per request)."""

    __slots__ = ("own", "blocked")

    def __init__(self, own: Iterable[int] = (), blocked: frozenset[int] = frozenset()
                 ) -> None:
        self.own = set(own)
        self.blocked = blocked

    def __contains__(self, item: object) -> bool:
        return item in self.own or item in self.blocked

    def add(self, item: int) -> None:
        self.own.add(item)

    def update(self, items: Iterable[int]) -> None:
        self.own.update(items)

    def copy(self) -> Exclusions:
        return Exclusions(self.own, self.blocked)


# --- list building (pure) ----------------------------------------------------------------

def entry(item_id: int, score: float, reason: str, reason_item_id: int | None,
          version: str | None) -> Entry:
    return {"item_id": int(item_id), "score": round(float(score), 6), "reason": reason,
            "reason_item_id": None if reason_item_id is None else int(reason_item_id),
            "model_version": version}


def from_list(items: Sequence[int], scores: Sequence[float], reasons: Sequence[str],
              reason_item_ids: Sequence[int | None] | None, version: str | None,
              blocked: Exclusions, default_reason: str = "",
              default_reason_item: int | None = None) -> list[Entry]:
    """Entries of a stored list in order, skipping ``blocked`` items (and adding them)."""
    out = []
    for pos, item in enumerate(items):
        if item in blocked:
            continue
        blocked.add(item)
        score = scores[pos] if pos < len(scores) else 0.0
        reason = reasons[pos] if pos < len(reasons) and reasons[pos] else default_reason
        rid = default_reason_item
        if reason_item_ids is not None and pos < len(reason_item_ids):
            rid = reason_item_ids[pos]
        out.append(entry(item, score, reason, rid, version))
    return out


def top_up(entries: list[Entry], popular: PopularList, blocked: Exclusions, limit: int
           ) -> list[Entry]:
    """Cut ``entries`` to ``limit``, filling a short list from ``popular``."""
    entries = entries[:limit]
    if len(entries) < limit:
        for item, score in zip(popular.items, popular.scores, strict=False):
            if item in blocked:
                continue
            blocked.add(item)
            entries.append(entry(item, score, POPULAR_REASON, None, popular.model_version))
            if len(entries) >= limit:
                break
    return entries


def blend(read: UserRead, exclude: Exclusions, limit: int, popular: PopularList,
          page_item: int | None = None) -> list[Entry]:
    """The personalized list: recent items and ``exclude`` removed, "Because you watched
    X" items (``BLEND_PER_ANCHOR`` per recent item, newest first; the product page's
    item, "Similar to X", before them) at positions 1, 3, 5..., then the precomputed
    list, then popular items when short."""
    blocked = exclude.copy()
    blocked.update(read.recent)
    blended: list[Entry] = []
    taken = blocked.copy()
    taken.update(read.history_tail)  # no blend re-offers a known item
    for anchor in read.anchors:
        template = PAGE_REASON if anchor.item_id == page_item else WATCHED_REASON
        reason = template.format(title=anchor.title)
        n = 0
        for item, score in zip(anchor.items, anchor.scores, strict=False):
            if n >= BLEND_PER_ANCHOR:
                break
            if item in taken:
                continue
            taken.add(item)
            blended.append(entry(item, score, reason, anchor.item_id, read.version))
            n += 1
    blocked.update(e["item_id"] for e in blended)
    base = from_list(read.items or [], read.scores, read.reasons, read.reason_item_ids,
                     read.version, blocked)
    merged: list[Entry] = []
    b = p = 0
    while len(merged) < limit and (b < len(blended) or p < len(base)):
        if b < len(blended) and (len(merged) % 2 == 0 or p >= len(base)):
            merged.append(blended[b])
            b += 1
        else:
            merged.append(base[p])
            p += 1
    return top_up(merged, popular, blocked, limit)


LIKED_REASON = "Because you liked {title}"
CATEGORY_REASON = "Trending in {category}"


def from_preferences(prefs: PreferencesRead, blocked: Exclusions, limit: int
                     ) -> list[Entry]:
    """The cold-start list of a user without a precomputed list: the similar items of
    each liked item ("Because you liked X") and the trending items of each chosen
    category ("Trending in C"), taken in turn, one from each list per round, in the
    user's order; ``blocked`` (and what is taken) left out."""
    sources = [(a.items, a.scores, LIKED_REASON.format(title=a.title), a.item_id)
               for a in prefs.similar]
    sources += [(items, scores, CATEGORY_REASON.format(category=cat), None)
                for cat, items, scores in prefs.categories]
    cursors = [0] * len(sources)
    out: list[Entry] = []
    while len(out) < limit and any(c < len(s[0]) for c, s in zip(cursors, sources,
                                                                 strict=True)):
        for k, (items, scores, reason, rid) in enumerate(sources):
            while cursors[k] < len(items):
                item, pos = items[cursors[k]], cursors[k]
                cursors[k] += 1
                if item in blocked:
                    continue
                blocked.add(item)
                score = scores[pos] if pos < len(scores) else 0.0
                out.append(entry(item, score, reason, rid, prefs.version))
                break
            if len(out) >= limit:
                break
    return out


def payload(entries: list[Entry], *, fallback: bool, source: str, model_version: str | None,
            **ids: int | str | None) -> dict[str, Any]:
    return {"recommendations": entries, "experiment_id": None, "variant": None,
            "fallback": fallback, "source": source, **ids, "model_version": model_version,
            "request_id": g.get("request_id")}


def interleave(bodies: Sequence[dict[str, Any]], limit: int, rng) -> tuple[list[Entry],
                                                                           list[int]]:
    """Team-draft (multi)leaving of the bodies' lists: the shown entries and each one's
    team (the index of the body it came from)."""
    rankings = [[e["item_id"] for e in b["recommendations"]] for b in bodies]
    mixed = multileave(rankings, limit, rng)
    # Each item as its team's list has it (its score, reason and version).
    by_team = [{e["item_id"]: e for e in b["recommendations"]} for b in bodies]
    return ([by_team[t][i] for i, t in zip(mixed.items, mixed.teams, strict=True)],
            list(mixed.teams))


def popular_payload(popular: PopularList, blocked: Exclusions, limit: int, source: str,
                    **ids: int | str | None) -> dict[str, Any]:
    entries = top_up([], popular, blocked, limit)
    return payload(entries, fallback=True, source=source, model_version=popular.model_version,
                   **ids)


# --- views -------------------------------------------------------------------------------

def _limit() -> int:
    s = services().settings
    return validation.limit(request.args.get("limit"), s.serve_limit_default,
                            s.serve_limit_max)


def _optional_id(name: str) -> int | str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    return validation.entity_id(raw, name)


# An internal id no user or item has (ids start at 1): an unknown external id is read as
# it, so that it gets the answer of a user or item without a list.
UNKNOWN = 0


def _respond(body: dict[str, Any], strict: bool = True) -> Response:
    """``body`` with the clients' item ids (serve/ids.py), as JSON."""
    body["recommendations"] = services().names.render(body["recommendations"], strict)
    return jsonify(body)


def _count_fallback(cause: str | None) -> None:
    if cause:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        services().metrics.inc("recs_fallbacks_total", endpoint=rule, cause=cause)


def _memory(exc: Exception, blocked: Exclusions, limit: int, **ids: int | str | None
            ) -> Response:
    """The answer while the database is down, too slow or failing."""
    return _respond(_memory_body(exc, blocked, limit, **ids), strict=False)


def _memory_body(exc: Exception, blocked: Exclusions, limit: int, **ids: int | str | None
                 ) -> dict[str, Any]:
    if isinstance(exc, DatabaseUnavailable):
        cause = exc.cause
    else:
        cause = "database_error"
        log.exception("database read failed; answering from memory")
    _count_fallback(cause)
    popular = services().popular.get(refresh=False)
    return popular_payload(popular, blocked, limit, "memory", **ids)


def _from_popular(read: UserRead | ListRead | None, blocked: Exclusions, limit: int,
                  **ids: int | str | None) -> dict[str, Any]:
    """Popular items of the served version: no version, or no list for this request."""
    svc = services()
    if read is None:
        _count_fallback("no_live_version")
        popular = svc.popular.get()
    else:
        _count_fallback("missing_list")
        _count_fallback(read.degraded)
        popular = svc.popular.for_version(read.version)
    return popular_payload(popular, blocked, limit, "popular", **ids)


DB_ERRORS = (DatabaseUnavailable, psycopg2.Error)


def _exclusions(items: Iterable[int] = ()) -> Exclusions:
    """``items`` and the blocked items."""
    return Exclusions(items, services().blocks.get())


def _spare(exclude: Exclusions) -> int:
    """How many more list items to read so that blocked ones rarely leave a list short."""
    return min(len(exclude.blocked), BLOCKED_SPARE)


@bp.before_request
def _read_key() -> None:
    g.request_id = str(uuid.uuid4())
    svc = services()
    if svc.read_keys_required:
        svc.require("read")


@bp.after_request
def _request_id_header(resp: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is not None:
        resp.headers["X-Request-Id"] = request_id
    return resp


@bp.get("/api/v1/recommendations/<user_id>")
def recommendations(user_id: str) -> Response:
    given_user = validation.entity_id(user_id, "user_id")
    args = request.args
    limit = _limit()
    rec_type = validation.choice(args.get("type"), "type", validation.REC_TYPES,
                                 "personalized")
    context = validation.choice(args.get("context"), "context", validation.CONTEXTS, None)
    given_item = _optional_id("item_id")
    if context == "product_page" and given_item is None:
        raise bad_request("item_id", "context=product_page requires item_id")
    given_exclude = validation.exclude_ids(args.getlist("exclude"),
                                           services().settings.exclude_max)
    svc = services()
    # The engine's own ids are excluded even when the database cannot map the others.
    exclude = _exclusions(v for v in given_exclude if isinstance(v, int))
    if isinstance(given_item, int):
        exclude.add(given_item)
    route: Route | None = None
    teams: list[int] | None = None
    uid, strict = UNKNOWN, True
    try:
        uid = svc.names.one("user", given_user) or UNKNOWN
        item_id = None
        if given_item is not None:
            item_id = svc.names.one("item", given_item) or UNKNOWN
        exclude.update(svc.names.internal("item", given_exclude).values())
        if item_id is not None:
            exclude.add(item_id)  # never recommend the item being looked at
        if svc.experiments is not None and uid != UNKNOWN:
            route = svc.experiments.route(uid)
        if rec_type == "personalized":
            page_item = item_id if context == "product_page" else None
            if route is not None and route.arms:
                body, teams = _interleaved(uid, exclude, limit, page_item, route,
                                           given_user)
            else:
                body = _personalized(uid, exclude, limit, page_item, given_user,
                                     _pin(route), blended=_blended(route))
        else:
            # Enough of the list for this response whatever it excludes (the store adds
            # the user's recent items); the anchor is excluded too.
            fetch = limit + len(exclude.own) + 1 + _spare(exclude)
            # An interleaving experiment interleaves personalized lists only: the other
            # types get its control variant's version.
            pin = _pin(route, route.arms[0].changes if route and route.arms else None,
                       personal=False)
            if rec_type == "similar":
                read = _read_pinned(svc.store.read_similar, pin, item_id=item_id,
                                    user_id=uid, fetch=fetch)
                body = _similar(read, exclude, limit, user_id=given_user)
            else:
                read = _read_pinned(svc.store.read_trending, pin, list_name="trending",
                                    user_id=uid, fetch=fetch)
                body = _trending(read, exclude, limit, user_id=given_user)
    except DB_ERRORS as exc:
        body = _memory_body(exc, exclude, limit, user_id=given_user)
        strict = False  # items this worker cannot name are left out
    # The exposure log keeps the engine's ids; the client gets its own (serve/ids.py).
    return _respond(_serve(body, uid, rec_type, route, teams), strict=strict)


def _pin(route: Route | None, changes: Any = None, personal: bool = True) -> Pin | None:
    """The version ``changes`` (default: the route's) pin when it is still kept; a
    version no longer kept is counted and the live one served. ``personal``: for the
    user's own list; the other types of a precompute variant come from its
    ``catalog_version`` (its base: a variant version holds users' lists only)."""
    if changes is None:
        changes = route.changes if route is not None else {}
    version = changes.get("model_version")
    if not personal:
        version = changes.get("catalog_version") or version
    if not isinstance(version, str) or not version:
        if personal and "precompute" in changes:
            _count_fallback("experiment_variant_missing")
        return None
    pin = services().experiments.pin(version)
    if pin is None:
        _count_fallback("experiment_version_gone")
    return pin


def _read_pinned(read: Callable[..., Any], pin: Pin | None, **kwargs: Any) -> Any:
    """``read`` of the pinned version, else (no pin, or its lists gone) of the live one."""
    if pin is not None:
        got = read(pin=pin, **kwargs)
        if got is not None:
            return got
        _count_fallback("experiment_version_gone")
    return read(**kwargs)


def _blended(route: Route | None, changes: Any = None) -> bool:
    if changes is None:
        changes = route.changes if route is not None else {}
    return changes.get("blend", True) is not False


def _exploration_rate(route: Route | None) -> float:
    rate = route.changes.get("exploration_rate") if route is not None else None
    if isinstance(rate, int | float) and not isinstance(rate, bool) and 0 <= rate <= 1:
        return float(rate)
    return services().settings.exploration_rate


def _serve(body: dict[str, Any], uid: int, rec_type: str, route: Route | None,
           teams: list[int] | None) -> dict[str, Any]:
    """``body`` with its experiment, explored (unless interleaved) and put on the exposure
    log."""
    svc = services()
    if svc.exposures is None:  # experiments off
        return body
    request_id = body["request_id"]
    entries = body["recommendations"]
    propensities = None
    if teams is None:
        shown = explore([e["item_id"] for e in entries], svc.settings.exploration_top_k,
                        _exploration_rate(route), request_rng(uid, request_id))
        if shown.explored:
            by_item = {e["item_id"]: e for e in entries}
            entries = body["recommendations"] = [by_item[i] for i in shown.items]
        propensities = shown.propensities
    if route is not None:
        body["experiment_id"] = route.experiment_key
        body["variant"] = route.variant
    svc.exposures.put(Exposure(
        request_id=request_id, served_at=dt.datetime.now(dt.UTC), user_id=uid,
        endpoint=rec_type, experiment_key=body["experiment_id"], variant=body["variant"],
        model_version=body["model_version"], items=tuple(e["item_id"] for e in entries),
        propensities=propensities, teams=None if teams is None else tuple(teams)))
    return body


def _interleaved(uid: int, exclude: Exclusions, limit: int, page_item: int | None,
                 route: Route, given_user: int | str) -> tuple[dict[str, Any], list[int]]:
    """One team-draft interleaved list of the experiment's variants' lists (seeded by the
    user and request ids), and each item's team."""
    bodies = [_personalized(uid, exclude, limit, page_item, given_user,
                            _pin(route, arm.changes), blended=_blended(route, arm.changes))
              for arm in route.arms]
    entries, teams = interleave(bodies, limit, request_rng(uid, g.request_id))
    body = payload(entries, fallback=any(b["fallback"] for b in bodies),
                   source=bodies[0]["source"], model_version=bodies[0]["model_version"],
                   user_id=given_user)
    return body, teams


def _personalized(uid: int, exclude: Exclusions, limit: int, page_item: int | None,
                  given_user: int | str, pin: Pin | None = None,
                  blended: bool = True) -> dict[str, Any]:
    svc = services()
    # What the response can use: the limit, plus every item that may be removed from
    # the list (excluded, blended in from anchors; the store adds the recent items).
    # Blocked items are not counted: the list's tail and the top-up make up for them.
    fetch = limit + len(exclude.own) + BLEND_PER_ANCHOR * (ANCHORS + 1) + _spare(exclude)
    read = _read_pinned(svc.store.read_user, pin, user_id=uid, page_item=page_item,
                        fetch=fetch)
    if read is None or read.items is None:
        blocked = exclude.copy()
        blocked.update(read.recent if read else ())
        if read is not None and uid != UNKNOWN:
            prefs = svc.store.read_preferences(uid, fetch=limit + len(blocked.own)
                                               + _spare(exclude))
            if prefs is not None and (prefs.similar or prefs.categories):
                _count_fallback("missing_list")
                blocked.update(prefs.liked)
                entries = from_preferences(prefs, blocked, limit)
                popular = svc.popular.for_version(prefs.version)
                return payload(top_up(entries, popular, blocked, limit), fallback=True,
                               source="preferences", model_version=prefs.version,
                               user_id=given_user)
        return _from_popular(read, blocked, limit, user_id=given_user)
    _count_fallback(read.degraded)
    if not blended:
        read = dataclasses.replace(read, anchors=[])
    entries = blend(read, exclude, limit, svc.popular.for_version(read.version), page_item)
    return payload(entries, fallback=read.degraded is not None, source="precomputed",
                   model_version=read.version, user_id=given_user)


def _similar(read: ListRead | None, exclude: Exclusions, limit: int,
             **ids: int | str | None) -> dict[str, Any]:
    blocked = exclude.copy()
    if read is not None:
        blocked.update(read.recent)
        if read.anchor_id is not None:
            blocked.add(read.anchor_id)
    if read is None or read.items is None:
        return _from_popular(read, blocked, limit, **ids)
    _count_fallback(read.degraded)
    entries = from_list(read.items, read.scores, read.reasons, None, read.version, blocked,
                        default_reason=f"Similar to {read.anchor_title or read.anchor_id}",
                        default_reason_item=read.anchor_id)
    popular = services().popular.for_version(read.version)
    return payload(top_up(entries, popular, blocked, limit), fallback=read.degraded is not None,
                   source="similar", model_version=read.version, **ids)


def _trending(read: ListRead | None, exclude: Exclusions, limit: int,
              **ids: int | str | None) -> dict[str, Any]:
    blocked = exclude.copy()
    if read is not None:
        blocked.update(read.recent)
    if read is None or read.items is None:
        return _from_popular(read, blocked, limit, **ids)
    _count_fallback(read.degraded)
    entries = from_list(read.items, read.scores, read.reasons, None, read.version, blocked,
                        default_reason="Trending now")
    if read.fill_items and len(entries) < limit:
        entries += from_list(read.fill_items, read.fill_scores or [], read.fill_reasons or [],
                             None, read.version, blocked, default_reason="Trending now")
    popular = services().popular.for_version(read.version)
    return payload(top_up(entries, popular, blocked, limit), fallback=read.degraded is not None,
                   source="trending", model_version=read.version, **ids)


@bp.get("/api/v1/similar/<item_id>")
def similar(item_id: str) -> Response:
    given = validation.entity_id(item_id, "item_id")
    limit = _limit()
    exclude = _exclusions({given} if isinstance(given, int) else ())
    try:
        iid = services().names.one("item", given)
        if iid is None:
            raise ApiError(404, "not_found", f"item {given} is unknown", "item_id")
        exclude.add(iid)
        read = services().store.read_similar(iid, fetch=limit + 1 + _spare(exclude))
        if read is not None and read.items is None and not read.anchor_known:
            raise ApiError(404, "not_found", f"item {given} is unknown", "item_id")
        return _respond(_similar(read, exclude, limit, item_id=given))
    except DB_ERRORS as exc:
        return _memory(exc, exclude, limit, item_id=given)


@bp.get("/api/v1/trending")
def trending() -> Response:
    """``trending``; ``trending:category:<c>``; ``trending:country:<CC>``; or, with both,
    the country's list kept to the category's items and filled from the category's."""
    limit = _limit()
    category = validation.category(request.args.get("category"))
    country = validation.country(request.args.get("country"))
    ids = {"category": category, "country": country}
    store = services().store
    exclude = _exclusions()
    fetch = limit + _spare(exclude)
    try:
        if country and category:
            read = store.read_trending(f"trending:country:{country}", category=category,
                                       fill_list=f"trending:category:{category}")
        elif country:
            read = store.read_trending(f"trending:country:{country}", fetch=fetch)
        elif category:
            read = store.read_trending(f"trending:category:{category}", fetch=fetch)
        else:
            read = store.read_trending("trending", fetch=fetch)
        return _respond(_trending(read, exclude, limit, **ids))
    except DB_ERRORS as exc:
        return _memory(exc, exclude, limit, **ids)
