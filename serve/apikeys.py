"""API keys: format, hashing, scopes, and the few SQL statements that manage them.

A key reads ``recs_<prefix>_<secret>``: ``prefix`` (12 hex digits) is a public lookup id
stored in clear; ``secret`` (32 random bytes, URL-safe base64) is never stored. The table
holds a per-key random salt and ``sha256(salt || secret)``; a presented key is hashed the
same way and compared with :func:`hmac.compare_digest` (constant time).

Why SHA-256 and not scrypt/PBKDF2: slow hashes protect low-entropy passwords against
offline guessing. These secrets are 256 random bits chosen by the server, so guessing is
hopeless with any hash, while a slow hash would cost tens of milliseconds of CPU on every
event post (the reader's budget is 10 ms) and would let anyone burn server CPU with bogus
keys. The salt costs nothing and keeps equal secrets (there are none) from sharing a hash.

Scopes: ``read`` (reads, when reads are keyed), ``events`` (posting events; includes
read), ``catalog`` (``PUT`` items and users' preferences; includes read) and ``admin``
(admin endpoints; includes all).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SCOPES = ("read", "events", "catalog", "admin")
# What each scope grants.
GRANTS = {"read": frozenset({"read"}), "events": frozenset({"read", "events"}),
          "catalog": frozenset({"read", "catalog"}),
          "admin": frozenset({"read", "events", "catalog", "admin"})}
KEY_RE = re.compile(r"recs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
MAX_NAME_CHARS = 100


class ApiKeyError(ValueError):
    """A key name, scope or id given to a management function is not acceptable."""


@dataclass(frozen=True)
class KeyRecord:
    """A stored key, as the reader needs it (never the secret)."""

    id: int
    name: str
    prefix: str
    salt: bytes
    key_hash: bytes
    scopes: frozenset[str]
    revoked: bool

    def grants(self, scope: str) -> bool:
        return any(scope in GRANTS.get(s, ()) for s in self.scopes)


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as ``recs keys list`` shows it."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def generate() -> tuple[str, str, str]:
    """A new key: (full key to hand out once, prefix, secret)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"recs_{prefix}_{secret}", prefix, secret


def parse(raw: str | None) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    if not raw:
        return None
    m = KEY_RE.fullmatch(raw.strip())
    return (m.group(1), m.group(2)) if m else None


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def matches(record: KeyRecord, secret: str) -> bool:
    """Constant-time check of ``secret`` against the stored hash."""
    return hmac.compare_digest(digest(record.salt, secret), record.key_hash)


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The scopes in canonical order (``events`` when none is given)."""
    scopes = list(scopes) or ["events"]
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ApiKeyError(f"unknown scope {bad[0]!r}: use {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


# --- SQL (cursors from core.db or the reader's store) -------------------------------------

LOOKUP_SQL = """
SELECT id, name, prefix, salt, key_hash, scopes, revoked_at IS NOT NULL
FROM api_keys WHERE prefix = %s
"""


def record_from_row(row: tuple | None) -> KeyRecord | None:
    if row is None:
        return None
    return KeyRecord(int(row[0]), row[1], row[2], bytes(row[3]), bytes(row[4]),
                     frozenset(row[5] or ()), bool(row[6]))


def create(cur, name: str, scopes: list[str] | tuple[str, ...] = ("events",)
           ) -> tuple[int, str]:
    """Store a new key; returns (id, the full key). The key is not kept anywhere."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS or name.isdigit():
        raise ApiKeyError(f"a key name must have 1 to {MAX_NAME_CHARS} characters and "
                        "not be all digits")
    scopes = check_scopes(list(scopes))
    cur.execute("SELECT 1 FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,))
    if cur.fetchone() is not None:
        raise ApiKeyError(f"an active key named {name!r} exists; revoke it first")
    key, prefix, secret = generate()
    salt = secrets.token_bytes(16)
    cur.execute("INSERT INTO api_keys (name, prefix, salt, key_hash, scopes) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (name, prefix, salt, digest(salt, secret), list(scopes)))
    return int(cur.fetchone()[0]), key


def revoke(cur, id_or_name: str) -> list[int]:
    """Revoke the active key with this id, prefix or name; returns the ids revoked."""
    ref = (id_or_name or "").strip()
    if ref.isdigit():
        where, arg = "id = %s", int(ref)
    elif re.fullmatch(r"[0-9a-f]{12}", ref):
        where, arg = "(prefix = %s OR name = %s)", None
    else:
        where, arg = "name = %s", ref
    params = (ref, ref) if arg is None else (arg,)
    cur.execute(f"UPDATE api_keys SET revoked_at = now() WHERE {where} "
                "AND revoked_at IS NULL RETURNING id", params)
    ids = [int(r[0]) for r in cur.fetchall()]
    if not ids:
        raise ApiKeyError(f"no active key with id, prefix or name {ref!r}")
    return ids


def list_keys(cur, include_revoked: bool = False) -> list[KeyInfo]:
    cur.execute("SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys "
                + ("" if include_revoked else "WHERE revoked_at IS NULL ")
                + "ORDER BY id")
    return [KeyInfo(int(r[0]), r[1], r[2], tuple(r[3]), r[4], r[5]) for r in cur.fetchall()]
