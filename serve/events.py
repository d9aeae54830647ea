"""``POST /api/v1/events``: one event or ``{"events": [...]}``, stored all or nothing.

Needs an API key with the ``events`` scope (unless ``RECS_EVENTS_KEY_REQUIRED=false``).
The reply is 201 ``{"stored": n, "duplicates": m}`` only after the commit; events with
an ``event_id`` are stored under a stable hash of it, so a retried batch is stored once.
While the database is down the reply is 503 with ``Retry-After``: nothing was stored.
Ids may be the client's own (``user_789``): they are mapped to internal ids first
(serve/ids.py), new ones created.

Events must be timed within the accepted window (settings ``event_max_age_days``,
``event_max_ahead_days``): one event outside it refuses the batch with 422. Each stored
row records the id of the key that sent it (``interactions.key_id``). A body the JSON
parser cannot take (malformed, nested too deep for it) is a 400, never a 500.
"""

from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest

from serve import validation
from serve.app import services
from serve.errors import ApiError, bad_request, unavailable
from serve.store import DatabaseUnavailable

bp = Blueprint("events", __name__)


@bp.post("/api/v1/events")
def post_events() -> Response:
    svc = services()
    if svc.events_key_required:
        svc.require("events")
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send the events as JSON (Content-Type: application/json)")
    try:
        body = request.get_json()
    except BadRequest:
        svc.metrics.inc("recs_events_total", outcome="rejected")
        raise bad_request(None, "the body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # the parser's own limit: ~1,000 levels of [ or {
        svc.metrics.inc("recs_events_total", outcome="rejected")
        raise bad_request(None, "the body is nested too deeply", code="invalid_json") \
            from None
    s = svc.settings
    try:
        events = validation.event_body(
            body, window=validation.Window.of_days(s.event_max_age_days,
                                                   s.event_max_ahead_days),
            key_id=g.get("api_key_id"))
    except ApiError:
        svc.metrics.inc("recs_events_total", outcome="rejected")
        raise
    try:
        # The clients' own ids (item_12345) are mapped first (serve/ids.py).
        users = svc.names.create("user", [e.user_id for e in events])
        items = svc.names.create("item", [e.item_id for e in events])
        stored = svc.store.insert_events([
            dataclasses.replace(e, user_id=users[e.user_id], item_id=items[e.item_id]).row()
            for e in events])
    except DatabaseUnavailable:
        svc.metrics.inc("recs_events_total", len(events), outcome="unavailable")
        raise unavailable() from None
    svc.metrics.inc("recs_events_total", stored, outcome="stored")
    svc.metrics.inc("recs_events_total", len(events) - stored, outcome="duplicate")
    resp = jsonify({"stored": stored, "duplicates": len(events) - stored})
    resp.status_code = 201
    return resp
