"""The reader's OpenAPI 3.1 document, served at ``/openapi.json``.

Kept true by tests/test_api_contract.py: every response of a set of known requests is
validated against it, and a schemathesis run generates requests from it and checks that
no answer is a 5xx or breaks it.
"""

from __future__ import annotations

from typing import Any

from core import ids
from core.constants import EVENT_TYPES
from core.settings import Settings
from serve import validation

BIGINT_MAX = validation.BIGINT_MAX
SOURCES = ["precomputed", "similar", "trending", "popular", "preferences", "memory"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ref("Error"), description, headers)


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
AUTH_HEADER = {"WWW-Authenticate": {"description": "the scheme to authenticate with",
                                    "schema": {"type": "string"}}}
RATE_LIMITED = "the API key is over its request rate (key_rate_per_s per worker process)"
ALLOW = {"Allow": {"description": "the methods the path accepts",
                   "schema": {"type": "string"}}}
REQUEST_ID = {"X-Request-Id": {"description": "the answer's request_id",
                               "schema": {"type": "string", "format": "uuid"}}}


def _read_errors(not_found: str = "no such path") -> dict[str, Any]:
    return {
        "400": _error("a parameter is invalid; error.field names it"),
        "401": _error("reads need an API key (RECS_READ_KEYS_REQUIRED) and none or an "
                      "invalid one was sent", AUTH_HEADER),
        "404": _error(not_found),
        "405": _error("method not allowed", ALLOW),
        "429": _error(RATE_LIMITED, RETRY_AFTER),
        "503": _error("the API key could not be checked (database down)", RETRY_AFTER),
    }


def _limit(settings: Settings) -> dict[str, Any]:
    return {"name": "limit", "in": "query", "required": False,
            "description": "how many items to return",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.serve_limit_max,
                       "default": settings.serve_limit_default}}


# A user or item id as clients send it (core/ids.py): the engine's integer, or the
# client's own id (``item_12345``), which the reader maps and answers with.
ID_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                       {"type": "string", "minLength": 1, "maxLength": ids.MAX_EXTERNAL_CHARS,
                        "pattern": ids.EXTERNAL_PATTERN}]}
ANSWER_ID = {"anyOf": [{"type": "integer", "minimum": 1},
                       {"type": "string", "minLength": 1}],
             "description": "the id as the client sent or loaded it"}


# In a URL every id is text: the engine's integer in digits, or the client's own id.
URL_ID = {"type": "string", "minLength": 1, "maxLength": ids.MAX_EXTERNAL_CHARS,
          "pattern": ids.EXTERNAL_PATTERN}


def _id_param(name: str, where: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path",
            "description": description + " (an integer, or the client's own id)",
            "schema": URL_ID}


def _text(max_chars: int) -> dict[str, Any]:
    """A string with a non-space character, no NUL, at most ``max_chars`` long."""
    return {"type": "string", "minLength": 1, "maxLength": max_chars,
            "pattern": "^[^\\x00]*[^\\x00\\s][^\\x00]*$"}


def _write_op(op_id: str, summary: str, body: str, ok: str, ok_description: str,
              params: list[dict[str, Any]]) -> dict[str, Any]:
    """A catalog write (PUT): the catalog or admin scope."""
    return {"put": {
        "operationId": op_id,
        "summary": summary,
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "parameters": params,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref(body)}}},
        "responses": {
            "200": _json(_ref(ok), ok_description),
            "400": _error("the body or the id is invalid; error.field names it"),
            "401": _error("no API key, or an invalid or revoked one", AUTH_HEADER),
            "403": _error("the API key lacks the catalog (or admin) scope"),
            "404": _error("no such path"),
            "405": _error("method not allowed", ALLOW),
            "413": _error("the body is larger than 1 MB"),
            "415": _error("the body is not declared as JSON"),
            "429": _error(RATE_LIMITED + ": nothing was written", RETRY_AFTER),
            "503": _error("the database is unavailable: nothing was written", RETRY_AFTER),
        },
    }}


def schemas(settings: Settings) -> dict[str, Any]:
    """The component schemas (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""
    ident = ID_SCHEMA
    version = {"type": ["string", "null"]}
    list_body = {
        "recommendations": {"type": "array", "items": _ref("Recommendation"),
                            "maxItems": settings.serve_limit_max},
        "experiment_id": {"type": ["string", "null"],
                          "description": "the experiment the user is in (its key), null "
                                         "when none (holdout, no running experiment, "
                                         "no user)"},
        "variant": {"type": ["string", "null"],
                    "description": "the user's variant of experiment_id; 'interleaved' "
                                   "for a team-draft interleaved list of its variants"},
        "fallback": {"type": "boolean",
                     "description": "true when the answer is not the live version's list "
                                    "asked for (popular items, a previous version, memory)"},
        "source": {"type": "string", "enum": SOURCES},
        "model_version": version,
        "request_id": {"type": "string", "format": "uuid",
                       "description": "this answer's id (also the X-Request-Id header): "
                                      "send it with the events it leads to"},
    }
    required = ["recommendations", "experiment_id", "variant", "fallback", "source",
                "model_version", "request_id"]

    def answer(extra: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {**list_body, **extra},
                "required": required + list(extra), "additionalProperties": False}

    item_fields = {
        "type": "object",
        "description": "fields left out keep their stored values; a new item needs a "
                       "title. available=false withdraws the item from every answer "
                       f"within RECS_BLOCKS_REFRESH_S ({settings.blocks_refresh_s:g} s)",
        "properties": {
            "title": _text(validation.MAX_TITLE_CHARS),
            "category": {"anyOf": [_text(validation.MAX_CATEGORY_CHARS), {"type": "null"}]},
            "tags": {"anyOf": [{"type": "array", "maxItems": validation.MAX_TAGS,
                                "items": _text(validation.MAX_TAG_CHARS)},
                               {"type": "null"}]},
            "description": {"anyOf": [_text(validation.MAX_DESCRIPTION_CHARS),
                                      {"type": "null"}]},
            "attributes": {"type": ["object", "null"],
                           "description": f"at most {validation.MAX_ATTRIBUTES_BYTES} "
                                          "bytes as JSON"},
            "available": {"type": "boolean"},
        },
        "additionalProperties": False,
    }
    return {
        "Recommendation": {
            "type": "object",
            "properties": {
                "item_id": ANSWER_ID,
                "score": {"type": "number"},
                "reason": {"type": "string"},
                "reason_item_id": {"anyOf": [*ANSWER_ID["anyOf"], {"type": "null"}]},
                "model_version": version,
            },
            "required": ["item_id", "score", "reason", "reason_item_id", "model_version"],
            "additionalProperties": False,
        },
        "Recommendations": answer({"user_id": ANSWER_ID}),
        "SimilarItems": answer({"item_id": ANSWER_ID}),
        "Trending": answer({"category": {"type": ["string", "null"]},
                            "country": {"type": ["string", "null"],
                                        "pattern": "^[A-Z]{2}$"}}),
        "Error": {
            "type": "object",
            "properties": {"error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": ["string", "null"]}},
                "required": ["code", "message", "field"],
                "additionalProperties": False}},
            "required": ["error"],
            "additionalProperties": False,
        },
        "Event": {
            "type": "object",
            "properties": {
                "user_id": ident,
                "item_id": ident,
                "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
                "timestamp": {"type": "string", "format": "date-time",
                              "description": "ISO-8601; no offset means UTC; at most "
                                             f"{settings.event_max_age_days} days old and "
                                             f"{settings.event_max_ahead_days} days ahead "
                                             "(else 422)"},
                "rating": {"type": ["number", "null"], "minimum": 0, "maximum": 10},
                "context": {"type": ["object", "null"],
                            "description": f"at most {validation.MAX_CONTEXT_BYTES} bytes "
                                           f"as JSON, {validation.MAX_CONTEXT_DEPTH} levels "
                                           "deep, no NUL character"},
                "event_id": {"anyOf": [
                    {"type": "string", "minLength": 1,
                     "maxLength": validation.MAX_EVENT_ID_CHARS},
                    {"type": "integer"}, {"type": "null"}],
                    "description": "the client's id: a retried event is stored once"},
                "request_id": {"type": ["string", "null"], "format": "uuid",
                               "description": "the request_id of the list this event "
                                              "answers (a UUID, else 422)"},
            },
            "required": ["user_id", "item_id", "event_type", "timestamp"],
        },
        "EventBatch": {
            "type": "object",
            "properties": {"events": {"type": "array", "items": _ref("Event"), "minItems": 1,
                                      "maxItems": validation.MAX_BATCH}},
            "required": ["events"],
        },
        "Stored": {
            "type": "object",
            "properties": {"stored": {"type": "integer", "minimum": 0},
                           "duplicates": {"type": "integer", "minimum": 0}},
            "required": ["stored", "duplicates"],
            "additionalProperties": False,
        },
        "ItemFields": item_fields,
        "ItemBatch": {
            "type": "object",
            "properties": {"items": {
                "type": "array", "minItems": 1, "maxItems": validation.MAX_ITEMS_BATCH,
                "items": _ref("BatchItem")}},
            "required": ["items"],
            "additionalProperties": False,
        },
        "BatchItem": {
            "type": "object",
            "properties": {"item_id": ID_SCHEMA,
                           **item_fields["properties"]},
            "required": ["item_id"],
            "additionalProperties": False,
        },
        "Written": {
            "type": "object",
            "properties": {k: {"type": "integer", "minimum": 0}
                           for k in ("created", "updated", "unchanged")},
            "required": ["created", "updated", "unchanged"],
            "additionalProperties": False,
        },
        "UserPreferences": {
            "type": "object",
            "properties": {"preferences": {
                "type": "object",
                "properties": {
                    "categories": {"type": "array", "maxItems": validation.MAX_PREFERENCES,
                                   "items": _text(validation.MAX_CATEGORY_CHARS)},
                    "items": {"type": "array", "maxItems": validation.MAX_PREFERENCES,
                              "items": ID_SCHEMA}},
                "additionalProperties": False}},
            "required": ["preferences"],
            "additionalProperties": False,
        },
        "UserWritten": {
            "type": "object",
            "properties": {
                "user_id": ANSWER_ID,
                "preferences": {"type": "object", "properties": {
                    "categories": {"type": "array", "items": {"type": "string"}},
                    "items": {"type": "array", "items": ANSWER_ID}},
                    "required": ["categories", "items"], "additionalProperties": False}},
            "required": ["user_id", "preferences"],
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "pid": {"type": "integer"}},
            "required": ["status", "pid"],
        },
        "Ready": {
            "type": "object",
            "properties": {"status": {"const": "ready"}, "live_version": {"type": "string"},
                           "degraded": {"type": "string"}},
            "required": ["status", "live_version"],
            "additionalProperties": False,
        },
        "AdminStatus": {"type": "object",
                        "required": ["pid", "served_version", "live_version",
                                     "database_breaker_open", "popular"]},
    }


def document(settings: Settings, read_keys_required: bool = True) -> dict[str, Any]:
    """The OpenAPI document for these settings (limits come from them); reads declare
    the key schemes unless ``read_keys_required`` is off."""
    read_params = [_limit(settings)]
    rec_params = [
        _id_param("user_id", "path", "the user"),
        {"name": "type", "in": "query", "required": False,
         "schema": {"type": "string", "enum": list(validation.REC_TYPES),
                    "default": "personalized"}},
        *read_params,
        {"name": "context", "in": "query", "required": False,
         "description": "product_page needs item_id: the lists are anchored on it",
         "schema": {"type": "string", "enum": list(validation.CONTEXTS)}},
        _id_param("item_id", "query", "the item of a product page, or the anchor of "
                                       "type=similar; never recommended"),
        {"name": "exclude", "in": "query", "required": False,
         "description": "item ids never to return: repeated and/or comma-separated",
         "style": "form", "explode": True,
         "schema": {"type": "array", "maxItems": settings.exclude_max,
                    "items": {**URL_ID, "pattern": ids.LISTED_PATTERN}}},
    ]
    security_events = [{"ApiKey": []}, {"Bearer": []}]
    security_reads = security_events if read_keys_required else []
    return {
        "openapi": "3.1.0",
        "info": {"title": "recs-engine reader", "version": "1",
                 "description": "Precomputed recommendations with real-time exclusion and "
                                "a popularity fallback. Errors are "
                                '{"error": {"code", "message", "field"}}.'},
        "paths": {
            "/api/v1/recommendations/{user_id}": {"get": {
                "operationId": "getRecommendations",
                "security": security_reads,
                "summary": "A user's recommendations",
                "parameters": rec_params,
                "responses": {"200": _json(_ref("Recommendations"), "the list", REQUEST_ID),
                              **_read_errors()},
            }},
            "/api/v1/similar/{item_id}": {"get": {
                "operationId": "getSimilar",
                "security": security_reads,
                "summary": "Items similar to an item",
                "parameters": [_id_param("item_id", "path", "the item"), *read_params],
                "responses": {"200": _json(_ref("SimilarItems"), "the list", REQUEST_ID),
                              **_read_errors("the item is unknown")},
            }},
            "/api/v1/trending": {"get": {
                "operationId": "getTrending",
                "security": security_reads,
                "summary": "Trending items, overall, in a category and/or a country",
                "parameters": [
                    {"name": "category", "in": "query", "required": False,
                     "schema": {"type": "string", "minLength": 1,
                                "maxLength": validation.MAX_CATEGORY_CHARS,
                                "pattern": "^[^\\x00-\\x1f\\x7f]+$"}},
                    {"name": "country", "in": "query", "required": False,
                     "description": "ISO 3166-1 alpha-2, any case; with category: the "
                                    "country's list kept to the category",
                     "schema": {"type": "string", "pattern": "^[A-Za-z]{2}$"}},
                    *read_params],
                "responses": {"200": _json(_ref("Trending"), "the list", REQUEST_ID),
                              **_read_errors()},
            }},
            "/api/v1/events": {"post": {
                "operationId": "postEvents",
                "summary": "Record one event or a batch (stored all or nothing)",
                "security": security_events,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [_ref("Event"), _ref("EventBatch")]}}}},
                "responses": {
                    "201": _json(_ref("Stored"), "stored (after the commit)"),
                    "400": _error("the body is invalid; error.field names the field"),
                    "401": _error("no API key, or an invalid or revoked one", AUTH_HEADER),
                    "403": _error("the API key lacks the events scope"),
                    "404": _error("no such path"),
                    "405": _error("method not allowed", ALLOW),
                    "413": _error("the body is larger than 1 MB"),
                    "415": _error("the body is not declared as JSON"),
                    "422": _error("an event's timestamp is outside the accepted window "
                                  "(error.code outside_window), or its request_id is not "
                                  "a UUID (invalid_request_id); error.field names it: "
                                  "nothing was stored"),
                    "429": _error(RATE_LIMITED + ": nothing was stored", RETRY_AFTER),
                    "503": _error("the database is unavailable: nothing was stored",
                                  RETRY_AFTER),
                },
            }},
            "/api/v1/items/{item_id}": _write_op(
                "putItem", "Create or change one catalog item (catalog scope)", "ItemFields",
                "Written", "written (after the commit)",
                [_id_param("item_id", "path", "the item")]),
            "/api/v1/items": _write_op(
                "putItems", "Create or change up to 1,000 items, all or nothing (catalog "
                            "scope)", "ItemBatch", "Written", "written (after the commit)", []),
            "/api/v1/users/{user_id}": _write_op(
                "putUser", "A user's onboarding preferences: categories and liked items "
                           "(catalog scope)", "UserPreferences", "UserWritten",
                "written (after the commit)", [_id_param("user_id", "path", "the user")]),
            "/api/v1/admin/status": {"get": {
                "operationId": "getAdminStatus",
                "summary": "What this worker serves (admin scope)",
                "security": [{"ApiKey": []}, {"Bearer": []}],
                "responses": {
                    "200": _json(_ref("AdminStatus"), "the worker's state"),
                    "401": _error("no API key, or an invalid or revoked one", AUTH_HEADER),
                    "403": _error("the API key lacks the admin scope"),
                    "405": _error("method not allowed", ALLOW),
                    "429": _error(RATE_LIMITED, RETRY_AFTER),
                    "503": _error("the API key could not be checked", RETRY_AFTER),
                },
            }},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "The process is alive",
                "responses": {"200": _json(_ref("Health"), "alive"),
                              "405": _error("method not allowed", ALLOW)}}},
            "/readyz": {"get": {
                "operationId": "readyz",
                "summary": "The database answers and a version is served",
                "responses": {"200": _json(_ref("Ready"), "ready"),
                              "405": _error("method not allowed", ALLOW),
                              "503": _error("database down or no live version")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics (text format)",
                "responses": {"200": {"description": "metrics",
                                      "content": {"text/plain": {"schema": {
                                          "type": "string"}}}},
                              "405": _error("method not allowed", ALLOW)}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document"),
                              "405": _error("method not allowed", ALLOW)}}},
            "/docs": {"get": {
                "operationId": "docsPage",
                "summary": "This document as an interactive page (Swagger UI, served here)",
                "responses": {"200": {"description": "the page",
                                      "content": {"text/html": {"schema": {
                                          "type": "string"}}}},
                              "405": _error("method not allowed", ALLOW)}}},
            "/docs/{name}": {"get": {
                "operationId": "docsAsset",
                "summary": "A file of the interactive page (scripts, styles, icons)",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file", "content": {
                                  media: {"schema": {"type": "string"}}
                                  for media in ("text/css", "text/javascript", "image/png")}},
                              "404": _error("no such file; error.field is name"),
                              "405": _error("method not allowed", ALLOW)}}},
        },
        "components": {
            "schemas": schemas(settings),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
