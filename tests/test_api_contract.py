"""The reader against its own OpenAPI document (/openapi.json).

1. Known requests, good and bad, through every endpoint: each answer's status must be
   documented for its operation, with the documented content type, and its body must
   validate against the documented schema.
2. schemathesis generates requests from the document (valid and invalid ones, a bounded
   number per operation) against the real app (WSGI, real Postgres): no answer may be a
   5xx, break the document, accept invalid input or ignore the API key.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core import settings as settings_mod
from serve.app import create_app
from serve.openapi import document
from tests.test_serve import UNKNOWN_KEY, event, make_key, publish_fixture

# RECS_FUZZ_EXAMPLES raises it for a deeper run.
EXAMPLES_PER_OPERATION = int(os.environ.get("RECS_FUZZ_EXAMPLES", "200"))


def _inline(node: Any, doc: dict) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points to."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            target: Any = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _inline(target, doc)
        return {k: _inline(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, doc) for v in node]
    return node


def _operation(doc: dict, method: str, path: str) -> dict | None:
    """The operation of ``method`` on ``path``; None when the path has no such method."""
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return ops.get(method.lower())
    raise AssertionError(f"{method} {path}: no such path in the document")


def check_against_document(doc: dict, method: str, path: str, resp) -> None:
    """Status documented, content type as documented, body valid against the schema.

    A method the path does not have must be a 405 with an Allow header and the error
    body."""
    op = _operation(doc, method, path.split("?")[0])
    if op is None:
        assert resp.status_code == 405 and "Allow" in resp.headers, (method, path)
        jsonschema.validate(resp.get_json(), _inline(doc["components"]["schemas"]["Error"],
                                                     doc))
        return
    documented = op["responses"].get(str(resp.status_code))
    assert documented is not None, (method, path, resp.status_code, "status not documented")
    (media, spec), = documented["content"].items()
    assert resp.mimetype == media, (method, path, resp.mimetype, media)
    if media == "application/json":
        schema = _inline(spec["schema"], doc)
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(resp.get_json(), schema, cls=jsonschema.Draft202012Validator)
    for header in documented.get("headers", {}):
        assert header in resp.headers, (method, path, header)


@pytest.fixture
def app(settings, dsn):
    publish_fixture(dsn, lists={
        "popular": [1, 2, 3, 4, 5, 6, 16, 17, 18, 19],
        "trending": [16, 17, 18, 10, 11],
        "trending:category:drama": [16, 18],
        "trending:country:FR": [17, 16, 19, 18, 12],
    })
    app = create_app({"SETTINGS": settings, "TESTING": True, "STORE_BACKOFF_S": 0.2,
                      "KEY_CACHE_S": 0})
    yield app
    app.extensions["recs"].store.close()


def test_document_is_served_and_well_formed(app):
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status)
                for media in response.get("content", {}).values():
                    jsonschema.Draft202012Validator.check_schema(_inline(media["schema"], doc))
    # schemathesis accepts it as an OpenAPI document.
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(
        [m for ops in doc["paths"].values() for m in ops])


READS = ("/api/v1/recommendations", "/api/v1/similar", "/api/v1/trending")


def test_known_answers_match_the_document(app, dsn, settings):
    events_key = make_key(dsn, ("events",))
    read_key = make_key(dsn, ("read",))
    admin_key = make_key(dsn, ("admin",))
    catalog_key = make_key(dsn, ("catalog",))
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    big = {"events": [event(7, 1, context={"x": "y" * 4000})] * 300}
    requests_: list[tuple[str, str, dict, int]] = [
        ("GET", "/api/v1/recommendations/7?limit=5&exclude=10,11&exclude=12", {}, 200),
        ("GET", "/api/v1/recommendations/7?context=product_page&item_id=20", {}, 200),
        ("GET", "/api/v1/recommendations/7?type=similar&item_id=20", {}, 200),
        ("GET", "/api/v1/recommendations/7?type=trending", {}, 200),
        ("GET", "/api/v1/recommendations/999", {}, 200),
        ("GET", "/api/v1/recommendations/0", {}, 400),
        ("GET", "/api/v1/recommendations/7?limit=", {}, 400),
        ("GET", "/api/v1/recommendations/7?exclude=1,,2", {}, 400),
        ("GET", "/api/v1/similar/20?limit=3", {}, 200),
        ("GET", "/api/v1/similar/9999", {}, 404),
        ("GET", "/api/v1/trending", {}, 200),
        ("GET", "/api/v1/trending?category=drama", {}, 200),
        ("GET", "/api/v1/trending?country=fr", {}, 200),
        ("GET", "/api/v1/trending?country=FR&category=drama&limit=4", {}, 200),
        ("GET", "/api/v1/trending?country=FRA", {}, 400),
        ("GET", "/api/v1/recommendations/7", {"headers": {"X-API-Key": ""}}, 401),
        ("GET", "/api/v1/trending", {"headers": {"X-API-Key": UNKNOWN_KEY}}, 401),
        ("POST", "/api/v1/events", {"json": event(7, 20),
                                    "headers": {"X-API-Key": events_key}}, 201),
        ("POST", "/api/v1/events", {"json": {"events": [event(7, 21)]},
                                    "headers": {"Authorization": f"Bearer {admin_key}"}}, 201),
        ("POST", "/api/v1/events", {"json": event(7, 20)}, 401),
        ("POST", "/api/v1/events", {"json": event(7, 20),
                                    "headers": {"X-API-Key": UNKNOWN_KEY}}, 401),
        ("POST", "/api/v1/events", {"json": event(7, 20),
                                    "headers": {"X-API-Key": read_key}}, 403),
        ("POST", "/api/v1/events", {"json": {"events": []},
                                    "headers": {"X-API-Key": events_key}}, 400),
        ("POST", "/api/v1/events", {"data": "x", "content_type": "text/plain",
                                    "headers": {"X-API-Key": events_key}}, 415),
        ("POST", "/api/v1/events", {"json": big, "headers": {"X-API-Key": events_key}}, 413),
        ("PUT", "/api/v1/events", {}, 405),
        ("DELETE", "/api/v1/recommendations/7", {}, 405),
        # The catalog (issue 14): the client's ids, one item or a batch, users.
        ("PUT", "/api/v1/items/sku-1", {"json": {"title": "Lamp", "tags": ["home"],
                                                  "attributes": {"watts": 40}},
                                         "headers": {"X-API-Key": catalog_key}}, 200),
        ("PUT", "/api/v1/items", {"json": {"items": [{"item_id": "sku-1", "available": False},
                                                     {"item_id": 20, "title": "Movie 20"}]},
                                  "headers": {"X-API-Key": admin_key}}, 200),
        ("PUT", "/api/v1/items/sku-2", {"json": {"category": "x"},
                                         "headers": {"X-API-Key": catalog_key}}, 400),
        ("PUT", "/api/v1/items/sku-2", {"json": {"title": "x"},
                                         "headers": {"X-API-Key": events_key}}, 403),
        ("PUT", "/api/v1/items/sku-2", {"data": "x", "content_type": "text/plain",
                                         "headers": {"X-API-Key": catalog_key}}, 415),
        ("PUT", "/api/v1/users/user_1", {"json": {"preferences": {"categories": ["drama"],
                                                                   "items": ["sku-1", 20]}},
                                          "headers": {"X-API-Key": catalog_key}}, 200),
        ("PUT", "/api/v1/users/user_1", {"json": {"preferences": []},
                                          "headers": {"X-API-Key": catalog_key}}, 400),
        ("GET", "/api/v1/items/sku-1", {}, 405),
        ("GET", "/api/v1/recommendations/user_1?limit=3", {}, 200),
        ("GET", "/api/v1/recommendations/user_1?exclude=sku-1,21", {}, 200),
        ("GET", "/api/v1/similar/sku-unknown", {}, 404),
        ("GET", "/api/v1/admin/status", {"headers": {"X-API-Key": admin_key}}, 200),
        ("GET", "/api/v1/admin/status", {"headers": {"X-API-Key": events_key}}, 403),
        ("GET", "/api/v1/admin/status", {}, 401),
        ("GET", "/healthz", {}, 200),
        ("GET", "/readyz", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("GET", "/openapi.json", {}, 200),
    ]
    for method, path, kwargs, status in requests_:
        if method == "GET" and path.startswith(READS) and "headers" not in kwargs:
            kwargs = {"headers": {"X-API-Key": read_key}}  # reads need a key by default
        resp = client.open(path, method=method, **kwargs)
        assert resp.status_code == status, (method, path, resp.status_code, resp.data[:300])
        check_against_document(doc, method, path, resp)
    body = client.get("/api/v1/trending?country=FR&category=drama&limit=4",
                      headers={"X-API-Key": read_key}).get_json()
    # The French list kept to drama (even ids), then the drama list (nothing new), then
    # popular items (any category) to fill the limit.
    assert [r["item_id"] for r in body["recommendations"]] == [16, 18, 12, 1]
    assert body["country"] == "FR" and body["category"] == "drama"


def test_answers_while_the_database_is_down_match_the_document(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_mod, "_cached", None)
    s = settings_mod.load(env={}, home=tmp_path, database_url="postgresql://recs@127.0.0.1:9/x")
    # Reads open (no key could be checked with the database down): the answers from memory.
    app = create_app({"SETTINGS": s, "TESTING": True, "READ_KEYS_REQUIRED": False})
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    for method, path, kwargs, status in [
        ("GET", "/api/v1/recommendations/7", {}, 200),
        ("GET", "/api/v1/similar/7", {}, 200),
        ("GET", "/api/v1/trending?country=DE", {}, 200),
        ("POST", "/api/v1/events", {"json": event(7, 1),
                                    "headers": {"X-API-Key": UNKNOWN_KEY}}, 503),
        ("GET", "/readyz", {}, 503),
    ]:
        resp = client.open(path, method=method, **kwargs)
        assert resp.status_code == status, (path, resp.data[:300])
        check_against_document(doc, method, path, resp)
        if status == 200:
            assert resp.get_json()["source"] == "memory"


# --- schemathesis ----------------------------------------------------------------------

class _CurrentApp:
    """A WSGI app that forwards to the app of the running test."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


CURRENT = _CurrentApp()
# The document is the one the app serves for default settings (the limits come from
# settings); test_document_matches_the_app checks that they are the same.
SCHEMA = schemathesis.openapi.from_dict(document(settings_mod.load(env={})))
SCHEMA.app = CURRENT


def test_fuzzed_document_is_the_served_one(app):
    assert app.test_client().get("/openapi.json").get_json() == document(
        settings_mod.load(env={}))


@pytest.fixture
def fuzz_key(app, dsn):
    CURRENT.app = app
    yield make_key(dsn, ("admin",))
    CURRENT.app = None


@pytest.mark.slow
@SCHEMA.parametrize()
@hyp_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
def test_schemathesis(case, fuzz_key):
    case.call_and_validate(headers={"X-API-Key": fuzz_key},
                           excluded_checks=_beyond_the_document(case))


def _beyond_the_document(case) -> list:
    """Checks to skip where a rule the document cannot state refuses valid-looking input:
    an event more than a day in the future or with a context over 4 KB,
    context=product_page without item_id (a rule across two parameters), and catalog
    writes (a new item needs a title; attributes over 4 KB; an id twice in a batch). Everything else
    (no 5xx, schemas, statuses, headers, invalid input refused, keys enforced) holds."""
    if case.operation.path == "/api/v1/events":
        return [positive_data_acceptance]
    # Catalog writes: a new item needs a title, attributes are 4 KB at most, an id once
    # per batch (rules across fields, rows and the stored catalog).
    if case.operation.method.upper() == "PUT":
        return [positive_data_acceptance]
    query = case.query or {}
    if query.get("context") == "product_page" and query.get("item_id") is None:
        return [positive_data_acceptance]
    return []
