"""The reader's app factory: ``create_app(test_config=None)``.

Settings come from ``RECS_*`` variables (core.settings); ``test_config`` may carry a
ready ``SETTINGS`` object, ``STORE_BACKOFF_S``, ``LIVE_TTL_S``, ``KEY_CACHE_S``,
``READ_KEYS_REQUIRED``, ``EVENTS_KEY_REQUIRED``, and any Flask setting. Each worker
process builds its own connection pool and popular list (gunicorn runs with preload off).

Keys: posting events needs a key with the ``events`` scope unless
``RECS_EVENTS_KEY_REQUIRED=false``; reads need one (any scope) unless
``RECS_READ_KEYS_REQUIRED=false`` (a trusted network only: anyone reaching the reader then
reads any user's list and, through "Because you watched X", their newest items); admin
endpoints always need the ``admin`` scope.

Every answer leaves out the blocked items (serve/blocks.py), re-read every
``blocks_refresh_s``. Users are routed to the running experiments (serve/experiments.py,
re-read every ``experiments_refresh_s``) and every list served for a user goes to the
exposure log (serve/exposures.py), unless ``experiments_enabled=0``. ``test_config`` may
carry ``EXPOSURE_THREAD_OFF`` (the log's writer thread is not started: rows stay queued
until ``flush``).

Run: ``gunicorn -c serve/gunicorn.conf.py "serve.app:create_app()"``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psycopg2
from flask import Flask, Response, current_app, g, jsonify, request

from core import settings as settings_mod
from core.settings import Settings, SettingsError
from serve import auth, errors
from serve.auth import KeyCache
from serve.blocks import BlockSet
from serve.experiments import ExperimentSet
from serve.exposures import ExposureLog
from serve.fallback import PopularCache, snapshot_path
from serve.ids import IdNames
from serve.metrics import Metrics
from serve.store import BACKOFF_S, LIVE_TTL_S, DatabaseUnavailable, Store

MAX_CONTENT_LENGTH = 1024 * 1024
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Services:
    """What the blueprints share: settings, the database store, the popular list, keys
    and metrics."""

    settings: Settings
    store: Store
    popular: PopularCache
    blocks: BlockSet
    keys: KeyCache
    metrics: Metrics
    read_keys_required: bool
    events_key_required: bool
    names: IdNames
    # None while experiments are off (settings.experiments_enabled = 0).
    experiments: ExperimentSet | None = None
    exposures: ExposureLog | None = None

    def require(self, scope: str):
        """The request's API key if it grants ``scope`` (else a 401/403/503 error)."""
        return auth.require(scope, self.keys, self.metrics)


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["recs"]


def _setting_flag(test_config: dict[str, Any], key: str, settings: Settings,
                  default: bool) -> bool:
    """A boolean from test_config, else the settings field (once the lead adds it), else
    the ``RECS_<KEY>`` variable, else ``default``."""
    var = f"RECS_{key}"
    if key in test_config:
        value = test_config.pop(key)
    else:
        value = getattr(settings, key.lower(), None)
        if value is None:
            value = os.environ.get(var)
    try:
        return auth.flag(value, var, default)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the reader app (a new pool and popular list per call)."""
    test_config = dict(test_config or {})
    settings = test_config.pop("SETTINGS", None) or settings_mod.load()
    backoff_s = float(test_config.pop("STORE_BACKOFF_S", BACKOFF_S))
    live_ttl_s = float(test_config.pop("LIVE_TTL_S", LIVE_TTL_S))
    key_ttl_s = float(test_config.pop("KEY_CACHE_S", auth.KEY_TTL_S))
    read_keys = _setting_flag(test_config, "READ_KEYS_REQUIRED", settings, True)
    events_key = _setting_flag(test_config, "EVENTS_KEY_REQUIRED", settings, True)

    app = Flask(__name__)
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH)
    app.config.update(test_config)
    app.json.sort_keys = False
    app.json.compact = True
    _configure_logging(app)

    store = Store(settings.reader_dsn, settings.statement_timeout_ms, backoff_s=backoff_s,
                  live_ttl_s=live_ttl_s)
    popular = PopularCache(store, snapshot_path(settings.lake), settings.popular_refresh_s)
    store.on_switch.append(lambda _state: popular.invalidate())
    popular.load()
    blocks = BlockSet(store, settings.rules_file, settings.blocks_refresh_s)
    try:
        blocks.load()
    except (OSError, ValueError) as exc:  # the rule file: missing, or a bad line
        raise SettingsError(f"RECS_RULES_FILE: {exc}") from None
    metrics = Metrics(os.environ.get("RECS_METRICS_DIR") or None)
    metrics.start()
    experiments = exposures = None
    if settings.experiments_enabled:
        experiments = ExperimentSet(store, settings.experiment_holdout_fraction,
                                    settings.experiments_refresh_s)
        experiments.refresh()  # the database may be down: the set fills once it answers
        exposures = ExposureLog(settings.reader_dsn, metrics, settings.exposure_queue_max,
                                settings.exposure_batch, settings.exposure_flush_s)
        if not test_config.pop("EXPOSURE_THREAD_OFF", False):
            exposures.start()
    svc = Services(settings, store, popular, blocks, KeyCache(store, key_ttl_s), metrics,
                   read_keys, events_key, IdNames(store), experiments, exposures)
    app.extensions["recs"] = svc

    from serve.admin import bp as admin_bp
    from serve.catalog import bp as catalog_bp
    from serve.docs import bp as docs_bp
    from serve.events import bp as events_bp
    from serve.openapi import document
    from serve.recommendations import bp as recommendations_bp

    app.register_blueprint(recommendations_bp)
    app.register_blueprint(events_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(catalog_bp)
    app.register_blueprint(docs_bp)
    errors.register(app)

    @app.before_request
    def _started() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def _measured(resp: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.inc("recs_http_requests_total", endpoint=rule, method=request.method,
                    status=str(resp.status_code))
        t0 = g.get("t0")
        if t0 is not None:
            metrics.observe("recs_http_request_duration_seconds", time.perf_counter() - t0,
                            endpoint=rule)
        return resp

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz")
    def readyz():
        try:
            state = store.live_state(refresh=True)
        except DatabaseUnavailable as exc:
            # The driver's text (host, user, server message) stays in the log.
            app.logger.warning("readyz: database unavailable (%s): %s", exc.cause,
                               str(exc.__cause__ or exc).strip().splitlines()[0]
                               if str(exc.__cause__ or exc).strip() else exc.cause)
            return errors.error_response(503, "unavailable",
                                         f"database unavailable ({exc.cause})")
        if state.version is None:
            return errors.error_response(503, "not_ready", "no live model version")
        body: dict[str, Any] = {"status": "ready", "live_version": state.version}
        if state.degraded:
            body["degraded"] = state.degraded
        return jsonify(body)

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(_live_gauges(store)), mimetype=None,
                        content_type=PROMETHEUS_TYPE)

    openapi_doc = document(settings, read_keys)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_doc)

    return app


LIVE_GAUGES_SQL = """
SELECT extract(epoch FROM s.switched_at)::float8, extract(epoch FROM m.data_until)::float8
FROM serving_state s LEFT JOIN model_runs m ON m.model_version = s.live_version
WHERE s.live_version IS NOT NULL
"""


def _live_gauges(store: Store) -> dict[str, float]:
    """The live version's publish time and data end (serve/metrics.py); none while the
    database is unreachable or no version is live."""
    try:
        row = store.fetchone(LIVE_GAUGES_SQL)
    except (DatabaseUnavailable, psycopg2.Error):
        return {}
    if row is None:
        return {}
    names = ("recs_live_version_published_timestamp_seconds",
             "recs_live_data_until_timestamp_seconds")
    return {n: float(v) for n, v in zip(names, row, strict=True) if v is not None}


def _configure_logging(app: Flask) -> None:
    """Under gunicorn, log through its error log; otherwise keep Flask's default."""
    import logging

    gunicorn_logger = logging.getLogger("gunicorn.error")
    if gunicorn_logger.handlers:
        logger = logging.getLogger("serve")  # parent of app.logger ("serve.app")
        logger.handlers = gunicorn_logger.handlers
        logger.setLevel(gunicorn_logger.level)
        logger.propagate = False
