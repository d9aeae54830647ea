"""Clients' ids and the engine's integer ids: one rule for the loaders and the reader.

An id given as a plain positive integer below :data:`MAPPED_ID_BASE` (an int, or a
string of ASCII digits) *is* the internal id: MovieLens, synthetic data and integer
clients need no mapping. Any other id (``item_12345``, ``user-789``, an integer of 10^15
or more) is an *external* id: the table ``external_ids`` (sql/012_external_ids.sql) gives
it an internal id from ``external_id_seq``, which starts at :data:`MAPPED_ID_BASE`, so
the two ranges never overlap and any internal id tells which kind it is. Mapped ids stay
below 2^53, exact in a float64 and in any JSON client.

Pure functions on plain values: no database here.
"""

from __future__ import annotations

import hashlib

MAPPED_ID_BASE = 10**15
MAX_EXTERNAL_CHARS = 256
BIGINT_MAX = 2**63 - 1
ENTITY_TYPES = ("user", "item")


def native(raw: object) -> int | None:
    """The internal id that ``raw`` is by itself (an int or ASCII digits, 1 .. 10^15 - 1),
    else None (the id needs a mapping, or is not an id at all: see :func:`check`)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 30:
        value = int(raw)
    else:
        return None
    return value if 1 <= value < MAPPED_ID_BASE else None


def problem(raw: str) -> str | None:
    """Why the string ``raw`` cannot be an external id (None when it can): empty, longer
    than 256 characters, a control character, surrounding spaces, or not valid Unicode."""
    if not raw:
        return "is empty"
    if len(raw) > MAX_EXTERNAL_CHARS:
        return f"is longer than {MAX_EXTERNAL_CHARS} characters"
    if raw != raw.strip():
        return "has leading or trailing spaces"
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        return "holds a control character"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def is_mapped(internal_id: int) -> bool:
    """True when ``internal_id`` was allocated for an external id."""
    return internal_id >= MAPPED_ID_BASE


def stable_event_id(raw: str) -> int:
    """A stable 63-bit id for a client's event id (blake2b of its UTF-8), the same in the
    reader and the loaders, so a posted event and a loaded one with the same ``event_id``
    are stored once."""
    digest = hashlib.blake2b(raw.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & BIGINT_MAX
