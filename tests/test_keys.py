"""API keys: `recs keys` create / list / revoke, stored hashed, enforced by the reader.

Keys are checked against a real Postgres: missing or bad key 401, wrong scope 403,
revocation honoured, reads open or keyed by configuration, and the key never appears in
a log line, an error or the metrics.
"""

from __future__ import annotations

import hashlib
import logging

import psycopg2
import pytest

from cli import main as cli_main
from core.settings import SettingsError
from serve import apikeys
from serve.app import create_app
from tests.test_serve import UNKNOWN_KEY, count_events, event, make_key, publish_fixture


def recs(*argv: str) -> int:
    return cli_main.main(list(argv))


def _rows(dsn: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, name, prefix, salt, key_hash, scopes, revoked_at "
                        "FROM api_keys ORDER BY id")
            return cur.fetchall()
    finally:
        conn.close()


def _app(settings, **config):
    return create_app({"SETTINGS": settings, "TESTING": True, "KEY_CACHE_S": 0, **config})


# --- the command -----------------------------------------------------------------------

def test_create_list_revoke(settings, dsn, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert recs("keys", "create", "web-frontend") == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert apikeys.parse(key) is not None and "\n" not in key
    assert "shown once" in err and key not in err
    assert key not in caplog.text

    (row,) = _rows(dsn)
    key_id, name, prefix, salt, key_hash, scopes, revoked = row
    secret = key.split("_", 2)[2]
    assert name == "web-frontend" and scopes == ["events"] and revoked is None
    assert key.startswith(f"recs_{prefix}_")
    # Only a salted SHA-256 of the secret is stored, never the key or the secret.
    assert bytes(key_hash) == hashlib.sha256(bytes(salt) + secret.encode()).digest()
    assert len(bytes(salt)) == 16
    for value in row:
        assert secret not in str(value)

    assert recs("keys", "create", "ops", "--scope", "admin") == 0
    admin_key = capsys.readouterr().out.strip()
    assert recs("keys", "create", "web-frontend") == 2  # one active key per name
    assert "exists" in capsys.readouterr().err

    assert recs("keys", "list") == 0
    listing = capsys.readouterr().out
    assert "web-frontend" in listing and "ops" in listing and prefix in listing
    assert secret not in listing and admin_key.split("_", 2)[2] not in listing

    assert recs("keys", "revoke", "web-frontend") == 0
    assert f"revoked API key {key_id}" in capsys.readouterr().out
    assert recs("keys", "revoke", "web-frontend") == 2
    assert recs("keys", "list") == 0
    assert "web-frontend" not in capsys.readouterr().out
    assert recs("keys", "list", "--all") == 0
    assert "web-frontend" in capsys.readouterr().out
    # Revoked by id too, and the name can be reused.
    assert recs("keys", "create", "web-frontend", "--scope", "read") == 0
    capsys.readouterr()
    new_id = _rows(dsn)[-1][0]
    assert recs("keys", "revoke", str(new_id)) == 0
    assert all(r[6] is not None for r in _rows(dsn) if r[1] == "web-frontend")
    with pytest.raises(SystemExit):
        recs("keys", "create", "x", "--scope", "root")


def test_key_format_and_scopes():
    key, prefix, secret = apikeys.generate()
    assert apikeys.parse(key) == (prefix, secret)
    assert apikeys.parse(" " + key + " ") == (prefix, secret)
    for bad in ("", "recs_", key[:-1], key + "x", key.replace("recs_", "rec_"), "Bearer x"):
        assert apikeys.parse(bad) is None, bad
    record = apikeys.KeyRecord(1, "n", prefix, b"s" * 16,
                               apikeys.digest(b"s" * 16, secret), frozenset({"events"}), False)
    # Another last character (a fixed "A" was the same secret one time in 64).
    other = secret[:-1] + ("B" if secret.endswith("A") else "A")
    assert apikeys.matches(record, secret) and not apikeys.matches(record, other)
    assert record.grants("events") and record.grants("read") and not record.grants("admin")
    assert apikeys.check_scopes([]) == ("events",)
    assert apikeys.check_scopes(["admin", "read"]) == ("read", "admin")
    with pytest.raises(apikeys.ApiKeyError):
        apikeys.check_scopes(["superuser"])


# --- the reader ------------------------------------------------------------------------

def test_events_need_a_key_with_the_events_scope(settings, dsn, caplog):
    caplog.set_level(logging.DEBUG)
    publish_fixture(dsn)
    events_key, read_key, admin_key = (make_key(dsn, (s,)) for s in ("events", "read", "admin"))
    client = _app(settings).test_client()
    url = "/api/v1/events"

    r = client.post(url, json=event(7, 20))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert r.get_json()["error"]["field"] == "X-API-Key"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in ("nonsense", UNKNOWN_KEY, events_key[:-4] + "AAAA", f"Bearer {events_key}"):
        r = client.post(url, json=event(7, 20), headers={"X-API-Key": bad})
        assert r.status_code == 401, bad
        assert bad not in r.get_data(as_text=True)
    r = client.post(url, json=event(7, 20), headers={"X-API-Key": read_key})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    assert count_events(dsn) == 0

    assert client.post(url, json=event(7, 20), headers={"X-API-Key": events_key}
                       ).status_code == 201
    assert client.post(url, json=event(7, 21),
                       headers={"Authorization": f"Bearer {admin_key}"}).status_code == 201
    assert count_events(dsn) == 2

    # Revoked: refused from the next request on (the cache holds keys 0 s here, 5 s live).
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        apikeys.revoke(cur, apikeys.parse(events_key)[0])
    conn.close()
    r = client.post(url, json=event(7, 22), headers={"X-API-Key": events_key})
    assert r.status_code == 401 and "revoked" in r.get_json()["error"]["message"]
    assert count_events(dsn) == 2

    # The keys never reach a log line or the metrics.
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'recs_auth_failures_total{reason="missing"} 1' in metrics
    assert 'recs_auth_failures_total{reason="scope"} 1' in metrics
    assert 'recs_auth_failures_total{reason="revoked"} 1' in metrics
    for key in (events_key, read_key, admin_key):
        secret = key.split("_", 2)[2]
        assert secret not in caplog.text and secret not in metrics


def test_reads_keyed_by_default_or_open_by_configuration(settings, dsn, monkeypatch):
    publish_fixture(dsn)
    read_key = make_key(dsn, ("read",))
    events_key = make_key(dsn, ("events",))
    paths = ["/api/v1/recommendations/7", "/api/v1/similar/20", "/api/v1/trending"]

    monkeypatch.setenv("RECS_READ_KEYS_REQUIRED", "false")  # the trusted-network opt-out
    open_client = _app(settings).test_client()
    for path in paths:
        assert open_client.get(path).status_code == 200

    monkeypatch.delenv("RECS_READ_KEYS_REQUIRED")  # the default: reads need a key
    keyed = _app(settings).test_client()
    for path in paths:
        r = keyed.get(path)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
        assert keyed.get(path, headers={"X-API-Key": read_key}).status_code == 200
        assert keyed.get(path, headers={"X-API-Key": events_key}).status_code == 200
    # Health, readiness, metrics and the document stay open.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path

    monkeypatch.setenv("RECS_READ_KEYS_REQUIRED", "maybe")
    with pytest.raises(SettingsError, match="RECS_READ_KEYS_REQUIRED"):
        _app(settings)


def test_event_keys_can_be_switched_off(settings, dsn, monkeypatch):
    publish_fixture(dsn)
    monkeypatch.setenv("RECS_EVENTS_KEY_REQUIRED", "false")
    client = _app(settings).test_client()
    r = client.post("/api/v1/events", json=event(7, 20))
    assert r.status_code == 201 and count_events(dsn) == 1


def test_admin_endpoint_needs_the_admin_scope(settings, dsn):
    publish_fixture(dsn)
    admin_key = make_key(dsn, ("admin",))
    client = _app(settings, EVENTS_KEY_REQUIRED=False).test_client()
    url = "/api/v1/admin/status"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"X-API-Key": make_key(dsn, ("events",))}
                      ).status_code == 403
    client.get("/api/v1/recommendations/7")
    body = client.get(url, headers={"X-API-Key": admin_key}).get_json()
    assert body["served_version"] == body["live_version"] == "v20240101-test"
    assert body["degraded"] is None and body["database_breaker_open"] is False
    assert body["popular"]["items"] == 10 and body["events_key_required"] is False
