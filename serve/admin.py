"""Admin endpoints: they always need an API key with the ``admin`` scope.

``GET /api/v1/admin/status``: what this worker serves (served and live version, why a
fallback is in force), the breaker, the popular list, the key cache.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify

from serve.app import services

bp = Blueprint("admin", __name__)


@bp.get("/api/v1/admin/status")
def status() -> Response:
    svc = services()
    svc.require("admin")
    state = svc.store.current_state()
    popular = svc.popular.get(refresh=False)
    return jsonify({
        "pid": os.getpid(),
        "served_version": state.version if state else None,
        "live_version": state.live if state else None,
        "degraded": state.degraded if state else None,
        "database_breaker_open": svc.store.is_down,  # reads
        "write_breaker_open": svc.store.breakers["write"].is_down,
        "popular": {"model_version": popular.model_version, "items": len(popular.items),
                    "origin": popular.origin},
        "cached_keys": len(svc.keys),
        "read_keys_required": svc.read_keys_required,
        "events_key_required": svc.events_key_required,
    })
