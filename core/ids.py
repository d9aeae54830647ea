"""Clients' ids and the engine's integer ids: one rule for the loaders and the reader.

An id given as a plain positive integer below :data:`MAPPED_ID_BASE` (an int, or a
string of ASCII digits) *is* the internal id: MovieLens, synthetic data and integer
clients need no mapping. Any other id (``item_12345``, ``user-789``, an integer of 10^15
or more) is an *external* id: the table ``external_ids`` (sql/013_external_ids.sql) gives
it an internal id from ``external_id_seq``, which starts at :data:`MAPPED_ID_BASE`, so
the two ranges never overlap and any internal id tells which kind it is. Mapped ids stay
below 2^53, exact in a float64 and in any JSON client.

Pure functions on plain values: no database here.
"""

from __future__ import annotations

import hashlib
import re

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


# The external ids the API and the loaders take: 1 to 256 characters, no whitespace,
# control character or "/" (ids travel in URL paths), not all zeros (0 is no id). Also
# the OpenAPI pattern.
# Characters no id may hold: controls (C0, DEL, C1), every Unicode space, "/". Spelled
# out (no \s): JSON Schema (ECMA-262) and Python disagree on what \s is.
_BAD = ("\\x00-\\x20\\x7f-\\xa0\\u1680\\u180e\\u2000-\\u200b\\u2028\\u2029\\u202f"
        "\\u205f\\u3000\\ufeff/")
EXTERNAL_PATTERN = f"^[^{_BAD}]*[^{_BAD}0][^{_BAD}]*$"
# One value of a comma-separated list (``exclude``): no comma, not starting with "[".
LISTED_PATTERN = f"^(?:[^{_BAD},\\[0][^{_BAD},]*|0+[^{_BAD},0][^{_BAD},]*)$"
BAD_CHAR = re.compile(f"[{_BAD}\\ud800-\\udfff]|\\s")


def problem(raw: str) -> str | None:
    """Why the string ``raw`` cannot be an external id (None when it can): empty, longer
    than 256 characters, whitespace, a control character or "/" in it, not valid Unicode,
    or only zeros."""
    if not raw:
        return "is empty"
    if len(raw) > MAX_EXTERNAL_CHARS:
        return f"is longer than {MAX_EXTERNAL_CHARS} characters"
    bad = BAD_CHAR.search(raw)
    if bad is not None:
        c = bad.group()
        if "\ud800" <= c <= "\udfff":
            return "is not valid Unicode"
        return "holds whitespace, a control character or a slash"
    if raw.strip("0") == "":
        return "is not a positive id"
    return None


def parse(raw: object) -> int | str | None:
    """``raw`` as the engine's id (an int) or an external id (a str); None when it is
    neither (see :func:`problem`)."""
    nat = native(raw)
    if nat is not None:
        return nat
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw) if MAPPED_ID_BASE <= raw <= BIGINT_MAX else None
    if isinstance(raw, str) and problem(raw) is None:
        return raw
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
