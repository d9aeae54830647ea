"""Clients' ids in the reader: external ids (``item_12345``) to internal ones and back.

The rule is core/ids.py's: a plain integer below 10^15 is the engine's id as it is; any
other id is looked up in ``external_ids``. Mappings never change, so each worker keeps
what it has seen in memory (bounded; dropping entries is always safe) and asks the
database only for ids it has not seen: a warm worker answers with no extra round trip.

* :meth:`IdNames.internal` resolves the ids of a request (path, ``item_id``, ``exclude``);
  an unknown external id is None (no such user or item yet).
* :meth:`IdNames.create` maps the new ids of posted events and catalog writes (an insert
  under the writes' breaker, committed at once; a mapping left by a request that then
  failed is harmless: it is the id's mapping forever).
* :meth:`IdNames.render` turns the internal ids of an answer back into the client's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psycopg2

from core import ids
from serve.store import DatabaseUnavailable, Store

MAX_CACHED = 200_000

TO_INTERNAL_SQL = """
SELECT external_id, internal_id FROM external_ids
WHERE entity_type = %s AND external_id = ANY(%s::text[])
"""
TO_EXTERNAL_SQL = """
SELECT internal_id, external_id FROM external_ids
WHERE entity_type = %s AND internal_id = ANY(%s::bigint[])
"""
CREATE_SQL = """
WITH w AS (SELECT e, o FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS w(e, o)),
new AS (
    INSERT INTO external_ids (entity_type, external_id, internal_id)
    SELECT %(entity)s, e, nextval('external_id_seq')
    FROM (SELECT e, o FROM w
          WHERE NOT EXISTS (SELECT 1 FROM external_ids x
                            WHERE x.entity_type = %(entity)s AND x.external_id = w.e)
          ORDER BY o) fresh
    ON CONFLICT DO NOTHING
    RETURNING external_id, internal_id)
SELECT external_id, internal_id FROM new
UNION ALL
SELECT external_id, internal_id FROM external_ids
WHERE entity_type = %(entity)s AND external_id = ANY(%(ids)s::text[])
"""


class IdNames:
    """This worker's view of ``external_ids``, read and written through ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._to_internal: dict[tuple[str, str], int] = {}
        self._to_external: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def _remember(self, entity: str, pairs: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            if len(self._to_internal) > MAX_CACHED:
                self._to_internal.clear()
                self._to_external.clear()
            for ext, internal in pairs:
                self._to_internal[(entity, ext)] = int(internal)
                self._to_external[(entity, int(internal))] = ext

    def internal(self, entity: str, values: Iterable[int | str]) -> dict[int | str, int]:
        """{given id: internal id} for the known ones (native ids map to themselves)."""
        out: dict[int | str, int] = {}
        wanted = []
        for v in values:
            if isinstance(v, int):
                out[v] = v
            elif (entity, v) in self._to_internal:
                out[v] = self._to_internal[(entity, v)]
            else:
                wanted.append(v)
        if wanted:
            rows = self.store.fetchall(TO_INTERNAL_SQL, (entity, wanted))
            self._remember(entity, rows)
            out.update({ext: int(internal) for ext, internal in rows})
        return out

    def one(self, entity: str, value: int | str) -> int | None:
        """The internal id of one request id; None when it is an unknown external id."""
        return self.internal(entity, [value]).get(value)

    def create(self, entity: str, values: Iterable[int | str]) -> dict[int | str, int]:
        """{given id: internal id}, mapping the external ids not seen before."""
        values = list(values)
        out = {v: v for v in values if isinstance(v, int)}
        wanted = list(dict.fromkeys(v for v in values if isinstance(v, str)
                                    and (entity, v) not in self._to_internal))
        if wanted:
            with self.store.connection("write") as conn, conn.cursor() as cur:
                cur.execute(CREATE_SQL, {"entity": entity, "ids": wanted})
                rows = cur.fetchall()
            self._remember(entity, rows)
        for v in values:
            if isinstance(v, str):
                out[v] = self._to_internal[(entity, v)]
        return out

    def external(self, entity: str, internal_ids: Iterable[int], strict: bool = True
                 ) -> dict[int, int | str]:
        """{internal id: the client's id}: native ids as they are, mapped ones by name.
        With ``strict=False`` (the database is down) ids not in memory are left out."""
        out: dict[int, int | str] = {}
        wanted = []
        for i in internal_ids:
            if not ids.is_mapped(i):
                out[i] = i
            elif (entity, i) in self._to_external:
                out[i] = self._to_external[(entity, i)]
            else:
                wanted.append(i)
        if wanted:
            try:
                rows = self.store.fetchall(TO_EXTERNAL_SQL, (entity, wanted))
            except (DatabaseUnavailable, psycopg2.Error):
                if strict:
                    raise
                return out
            self._remember(entity, [(ext, internal) for internal, ext in rows])
            out.update({int(internal): ext for internal, ext in rows})
        return out

    def render(self, entries: list[dict], strict: bool = True) -> list[dict]:
        """Answer entries with the client's item ids (``item_id``, ``reason_item_id``);
        an entry whose item has no name (only while the database is down, for ids this
        worker never saw) is left out."""
        wanted = {e["item_id"] for e in entries}
        wanted |= {e["reason_item_id"] for e in entries if e["reason_item_id"] is not None}
        names = self.external("item", wanted, strict=strict)
        out = []
        for e in entries:
            if e["item_id"] not in names:
                continue
            rid = e["reason_item_id"]
            out.append({**e, "item_id": names[e["item_id"]],
                        "reason_item_id": None if rid is None else names.get(rid)})
        return out
