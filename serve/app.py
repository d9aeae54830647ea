"""The reader's app factory: ``create_app(test_config=None)``.

Settings come from ``RECS_*`` variables (core.settings); ``test_config`` may carry a
ready ``SETTINGS`` object, ``STORE_BACKOFF_S``, and any Flask setting. Each worker
process builds its own connection pool and popular list (gunicorn runs with preload off).

Run: ``gunicorn -c serve/gunicorn.conf.py "serve.app:create_app()"``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, jsonify

from core import settings as settings_mod
from core.settings import Settings
from serve import errors
from serve.fallback import PopularCache, snapshot_path
from serve.store import BACKOFF_S, DatabaseUnavailable, Store

MAX_CONTENT_LENGTH = 1024 * 1024


@dataclass
class Services:
    """What the blueprints share: settings, the database store, the popular list."""

    settings: Settings
    store: Store
    popular: PopularCache


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["recs"]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the reader app (a new pool and popular list per call)."""
    test_config = dict(test_config or {})
    settings = test_config.pop("SETTINGS", None) or settings_mod.load()
    backoff_s = float(test_config.pop("STORE_BACKOFF_S", BACKOFF_S))

    app = Flask(__name__)
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH)
    app.config.update(test_config)
    app.json.sort_keys = False
    app.json.compact = True
    _configure_logging(app)

    store = Store(settings.dsn, settings.statement_timeout_ms, backoff_s=backoff_s)
    popular = PopularCache(store, snapshot_path(settings.lake), settings.popular_refresh_s)
    store.on_switch.append(lambda _state: popular.invalidate())
    popular.load()
    app.extensions["recs"] = Services(settings, store, popular)

    from serve.events import bp as events_bp
    from serve.recommendations import bp as recommendations_bp

    app.register_blueprint(recommendations_bp)
    app.register_blueprint(events_bp)
    errors.register(app)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz")
    def readyz():
        try:
            state = store.live_state(refresh=True)
        except DatabaseUnavailable as exc:
            return errors.error_response(503, "unavailable", f"database unavailable: {exc}")
        if state.version is None:
            return errors.error_response(503, "not_ready", "no live model version")
        return jsonify({"status": "ready", "live_version": state.version})

    return app


def _configure_logging(app: Flask) -> None:
    """Under gunicorn, log through its error log; otherwise keep Flask's default."""
    gunicorn_logger = logging.getLogger("gunicorn.error")
    if gunicorn_logger.handlers:
        logger = logging.getLogger("serve")  # parent of app.logger ("serve.app")
        logger.handlers = gunicorn_logger.handlers
        logger.setLevel(gunicorn_logger.level)
        logger.propagate = False
