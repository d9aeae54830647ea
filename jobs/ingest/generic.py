"""Generic import: a team's own events, items and users from CSV, Parquet or JSON Lines.

``recs load events|items|users PATH`` (cli/main.py) calls :func:`load`. ``PATH`` is a
file or a folder of files (``.csv``, ``.parquet``, ``.jsonl``/``.ndjson``, each also
``.gz`` but Parquet); the schema of each kind is in docs/data.md and :data:`SCHEMAS`.

* **Columns** are found by name; ``--map user_id=customer_id`` reads the schema's
  ``user_id`` from the file's ``customer_id``. Unknown columns are ignored.
* **Ids** go through core/ids.py: plain integers below 10^15 are the engine's ids, any
  other id is mapped to an internal one in ``external_ids`` (:class:`IdMapper`; the
  mapping is committed as it is allocated, on its own connection, and never changes).
* **Timestamps**: ISO-8601 (no offset means UTC) or epoch seconds or milliseconds (an
  integer of 10^11 or more is read as milliseconds).
* **Validation**: a bad row raises :class:`BadRowError` naming the file, line (Parquet:
  row) and reason, or with ``skip_bad`` is counted and left out.
* **Atomic per file, idempotent, resumable**: each file is written in one transaction
  (rows COPYed into a TEMP staging table, then upserted; events ``ON CONFLICT DO
  NOTHING`` under stable event ids) and recorded in ``loads`` (source ``import:<kind>``,
  digest of the file's bytes and the load's options). A file already recorded is skipped,
  so re-running a load adds nothing, and a load stopped by a bad row, a crash or Ctrl-C
  resumes with the file it was writing: the files before it are recorded, that one wrote
  nothing.
* **Progress**: ``progress`` is called after every chunk with a :class:`Progress`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2.errors
import psycopg2.extensions

from core import db, ids
from core.constants import EVENT_TYPES
from jobs.ingest import stable_ids

log = logging.getLogger("recs.ingest")

KINDS = ("events", "items", "users")
# (required, optional) columns of each kind, in docs/data.md's order.
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "events": (("user_id", "item_id", "event_type", "timestamp"),
               ("value", "context", "event_id")),
    "items": (("item_id", "title"),
              ("category", "tags", "description", "created_at", "attributes")),
    "users": (("user_id",), ("country", "created_at", "preferences")),
}
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
CHUNK_ROWS = 100_000
KEEP_REASONS = 5
MS_FROM = 10**11  # epoch integers from here on are milliseconds (10^11 s is year 5138)
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_JSON_BYTES = 4096  # context, attributes, preferences
MAX_EVENT_ID_CHARS = 64
MAX_CATEGORY_CHARS = 50
HOT_DAYS = 62  # events of the last 62 days get day partitions, older ones month partitions
_LOCK = "recs_load"

Cursor = psycopg2.extensions.cursor


class BadRowError(ValueError):
    """A row that cannot be loaded: ``<file>:<line>: <reason>`` (Parquet: ``row N``)."""

    def __init__(self, path: Path | str, line: int, reason: str, unit: str = "line") -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if unit == "line" else f"{self.path}: row {line}"
        super().__init__(f"{where}: {reason}")


class ImportSpecError(ValueError):
    """A load that cannot start (a bad option, a missing column, no files)."""


@dataclass(frozen=True)
class Progress:
    """Where a load is: rows read so far (all files), the share of the input's bytes
    done, the file being read and the seconds since the load started."""

    kind: str
    rows: int
    fraction: float
    file: str
    file_index: int
    files: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ImportReport:
    """What one ``recs load events|items|users`` did."""

    kind: str
    files: int = 0
    files_loaded: int = 0
    files_already: int = 0
    rows: int = 0
    written: int = 0  # events inserted / items or users inserted or changed
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    mapped_ids: int = 0  # external ids given an internal id by this load
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- options -------------------------------------------------------------------------------


def parse_map(values: Sequence[str], kind: str) -> dict[str, str]:
    """``["user_id=customer_id", ...]`` as {schema column: file column}; a bad entry
    raises ImportSpecError naming it."""
    required, optional = SCHEMAS[kind]
    out: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            raise ImportSpecError(f"--map {value!r}: expected SCHEMA_COLUMN=FILE_COLUMN, "
                               "e.g. user_id=customer_id")
        if name not in required + optional:
            raise ImportSpecError(f"--map {value!r}: {name!r} is not a column of {kind} "
                               f"(columns: {', '.join(required + optional)})")
        if name in out:
            raise ImportSpecError(f"--map {value!r}: {name!r} is mapped twice")
        out[name] = source
    return out


def discover(path: Path | str) -> list[Path]:
    """The files to load: ``path`` itself, or the folder's files with a known suffix (by
    name; hidden files and other suffixes are left out)."""
    root = Path(path)
    if root.is_file():
        if format_of(root) is None:
            raise ImportSpecError(f"{root}: unknown format (expected .csv, .parquet, .jsonl "
                               "or .ndjson, the text ones optionally .gz)")
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and format_of(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ImportSpecError(f"{root}: no .csv, .parquet, .jsonl or .ndjson file in it")
    return files


def format_of(path: Path) -> str | None:
    """``csv``, ``parquet`` or ``jsonl`` from the name (``.gz`` allowed on text)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        fmt = FORMATS.get(suffixes[-2]) if len(suffixes) > 1 else None
        return fmt if fmt in ("csv", "jsonl") else None
    return FORMATS.get(suffixes[-1]) if suffixes else None


def file_digest(path: Path, options: dict) -> str:
    """sha256 of the load's options and the file's bytes (not its name or place)."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode() + b"\0")
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --- reading: frames of raw values, with the record number of their first row ---------------


@dataclass
class Chunk:
    frame: pd.DataFrame  # the schema's columns present in the file, raw values
    first: int  # 0-based record number of the first row in the file
    fraction: float  # share of the file's bytes read


def _open_text(path: Path):
    raw = open(path, "rb")
    stream = gzip.open(raw) if path.suffix.lower() == ".gz" else raw
    return raw, stream


def _columns(path: Path, header: Sequence[str], kind: str, mapping: dict[str, str],
             line_unit: str = "line") -> dict[str, str]:
    """{file column: schema column} for the schema columns the file has."""
    required, optional = SCHEMAS[kind]
    present = set(header)
    out = {}
    for name in required + optional:
        source = mapping.get(name, name)
        if source in present:
            out[source] = name
        elif name in required:
            via = f" (mapped from {source!r})" if name in mapping else ""
            raise BadRowError(path, 1, f"no column {source!r}{via}: {kind} need "
                                       f"{', '.join(required)}", line_unit)
    return out


def _read_csv(path: Path, kind: str, mapping: dict[str, str], chunk_rows: int,
              bad: list[tuple[int, str]]) -> Iterator[Chunk]:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    raw, stream = _open_text(path)
    with raw, stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        header = next(csv.reader(text), None)
        if header is None:
            return
        header = [h.strip() for h in header]
    cols = _columns(path, header, kind, mapping)
    wrong_count: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        wrong_count.append((row.number or 0,
                            f"expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    raw = open(path, "rb")
    source = pa.PythonFile(raw, mode="r")
    if path.suffix.lower() == ".gz":
        source = pa.CompressedInputStream(source, "gzip")
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=4 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=kind != "events",
                                              invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, include_columns=list(cols),
                strings_can_be_null=True, quoted_strings_can_be_null=False))
        first = 0
        for batch in reader:
            if wrong_count:
                bad.extend(wrong_count)
                wrong_count.clear()
            frame = batch.to_pandas().rename(columns=cols)
            yield Chunk(frame, first, _fraction(raw, path))
            first += len(frame)
        bad.extend(wrong_count)
    except pa.ArrowInvalid as exc:
        raise BadRowError(path, 0, f"unreadable as CSV: {exc}") from None
    finally:
        raw.close()


def _fraction(raw, path: Path) -> float:
    size = path.stat().st_size
    return min(1.0, raw.tell() / size) if size else 1.0


def _frame(rows: list[dict], names: tuple[str, ...]) -> pd.DataFrame:
    present = [n for n in names if any(n in r for r in rows)]
    return pd.DataFrame({n: [r.get(n) for r in rows] for n in present}, dtype=object)


def _read_parquet(path: Path, kind: str, mapping: dict[str, str], chunk_rows: int,
                  bad: list[tuple[int, str]]) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for a file that is not Parquet
        raise BadRowError(path, 0, f"unreadable as Parquet: {exc}", "row") from None
    cols = _columns(path, pf.schema_arrow.names, kind, mapping, "row")
    total = max(pf.metadata.num_rows, 1)
    first = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=list(cols)):
        frame = batch.to_pandas(maps_as_pydicts="strict").rename(columns=cols)
        yield Chunk(frame, first, min(1.0, (first + len(frame)) / total))
        first += len(frame)


READERS = {"csv": _read_csv, "parquet": _read_parquet}  # JSON Lines: _read_jsonl


# --- validation: columns to typed arrays, a reason per bad row ------------------------------


class Checked:
    """The rows of a chunk and the first reason each bad one fails for."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, None, dtype=object)

    def flag(self, mask: np.ndarray, values: Sequence | np.ndarray, message: Callable) -> None:
        """Rows where ``mask`` is set (and not already bad) fail with ``message(value)``."""
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & pd.isna(self.reason))
        vals = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) \
            else values
        for i in hit:
            self.reason[i] = message(vals[i])

    @property
    def ok(self) -> np.ndarray:
        return pd.isna(self.reason)


def _missing(col: pd.Series) -> np.ndarray:
    """Null, NaN or an empty/blank string."""
    miss = pd.isna(col).to_numpy()
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        try:
            blank = col.str.strip().eq("").fillna(False).to_numpy(dtype=bool)
        except AttributeError:  # no string in the column (all null, or lists)
            blank = np.zeros(len(col), dtype=bool)
        miss = miss | blank
    return miss


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_ids(col: pd.Series, name: str, chk: Checked) -> tuple[np.ndarray, np.ndarray]:
    """(native ids, 0 where the id is external; external ids as str, None where native)."""
    n = len(col)
    native = np.zeros(n, dtype=np.int64)
    external = np.full(n, None, dtype=object)
    miss = _missing(col)
    chk.flag(miss, col, lambda v: f"{name} is missing")
    if pd.api.types.is_integer_dtype(col.dtype):
        vals = col.to_numpy(dtype=np.int64, na_value=0)
        chk.flag((vals < 1) & ~miss, vals, lambda v: f"{name} {v} is not a positive integer")
        small = (vals >= 1) & (vals < ids.MAPPED_ID_BASE)
        native[small] = vals[small]
        big = vals >= ids.MAPPED_ID_BASE
        external[big] = vals[big].astype(str)
        return native, external
    if pd.api.types.is_float_dtype(col.dtype):
        chk.flag(~miss, col, lambda v: f"{name} {v!r} is a number with a fraction or "
                                       "exponent: ids are integers or strings")
        return native, external
    values = col.to_numpy(dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    u_native = np.zeros(len(uniques), dtype=np.int64)
    u_ext = np.full(len(uniques), None, dtype=object)
    u_bad = np.full(len(uniques), None, dtype=object)
    u = pd.Series(uniques, dtype=object)
    is_str = u.map(type).eq(str).to_numpy()
    strs = u.where(is_str, "")
    digits = strs.str.fullmatch(r"[0-9]{1,30}").to_numpy(dtype=bool)
    # The common case, vectorised: strings that are plain ids (native or external).
    length = strs.str.len().to_numpy()
    plain = is_str & ~digits & (length >= 1) & (length <= ids.MAX_EXTERNAL_CHARS) \
        & ~strs.str.contains(ids.BAD_CHAR.pattern, regex=True).to_numpy(dtype=bool)
    u_ext[plain] = u[plain].to_numpy()
    for j in np.flatnonzero(~plain):
        v = uniques[j]
        if isinstance(v, bool):
            u_bad[j] = f"{name} {v!r} is not an id"
            continue
        if isinstance(v, float):
            if v.is_integer():
                v = int(v)
            else:
                u_bad[j] = f"{name} {v!r} is not an integer or a string"
                continue
        nat = ids.native(v)
        if nat is not None:
            u_native[j] = nat
            continue
        if isinstance(v, int):
            if 1 <= v <= ids.BIGINT_MAX:
                u_ext[j] = str(v)
            else:
                u_bad[j] = f"{name} {v} is not a positive integer"
            continue
        if not isinstance(v, str):
            u_bad[j] = f"{name} {_short(v)} is not an integer or a string"
            continue
        why = ids.problem(v)
        if why is not None:
            u_bad[j] = f"{name} {_short(v)} {why}"
            continue
        u_ext[j] = v
    valid = codes >= 0
    native[valid] = u_native[codes[valid]]
    external[valid] = u_ext[codes[valid]]
    bad_rows = np.zeros(n, dtype=bool)
    bad_rows[valid] = pd.notna(u_bad[codes[valid]])
    reasons = np.full(n, None, dtype=object)
    reasons[valid] = u_bad[codes[valid]]
    chk.flag(bad_rows, reasons, lambda r: r)
    return native, external


def check_times(col: pd.Series, name: str, chk: Checked, required: bool) -> np.ndarray:
    """Milliseconds since the epoch (0 where missing): ISO-8601, epoch seconds or ms."""
    n = len(col)
    out = np.zeros(n, dtype=np.int64)
    miss = _missing(col)
    if required:
        chk.flag(miss, col, lambda v: f"{name} is missing")
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        ts = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
        ms = (ts.astype("datetime64[ms, UTC]").astype("int64")).to_numpy()
        out[~miss] = ms[~miss]
    else:
        if pd.api.types.is_integer_dtype(col.dtype) or pd.api.types.is_float_dtype(col.dtype):
            nums = pd.to_numeric(col, errors="coerce")
            is_num = ~miss
            strs = pd.Series(np.full(n, None, dtype=object))
        else:
            values = col.astype(object).where(~miss, None)
            text = values.map(type).eq(str).to_numpy()
            if text.all():
                strs = values.str.strip()
                digits = strs.str.fullmatch(r"[0-9]+").fillna(False).to_numpy(dtype=bool)
            else:  # JSON Lines: numbers and strings mixed
                strs = values.map(lambda v: v.strip() if isinstance(v, str) else v)
                digits = strs.map(lambda v: isinstance(v, int | float)
                                  and not isinstance(v, bool) or (isinstance(v, str)
                                  and v.isascii() and v.isdigit())).to_numpy(dtype=bool)
            is_num = digits & ~miss
            nums = pd.to_numeric(strs.where(is_num, None), errors="coerce")
        nums = nums.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(nums) & (nums == np.floor(nums)) & (nums >= 0)
        chk.flag(is_num & ~whole, col, lambda v: f"{name} {_short(v)} is not whole epoch "
                                                 "seconds or milliseconds")
        secs = whole & (nums < MS_FROM)
        msec = whole & (nums >= MS_FROM)
        out[secs] = (nums[secs] * 1000).astype(np.int64)
        out[msec] = nums[msec].astype(np.int64)
        iso = ~is_num & ~miss
        if iso.any():
            parsed = pd.to_datetime(strs[iso], format="ISO8601", utc=True, errors="coerce")
            ok = parsed.notna().to_numpy()
            idx = np.flatnonzero(iso)
            good = idx[ok]
            out[good] = parsed[ok].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
            badmask = np.zeros(n, dtype=bool)
            badmask[idx[~ok]] = True
            chk.flag(badmask, col, lambda v: f"{name} {_short(v)} is not ISO-8601 or epoch "
                                             "seconds/milliseconds")
    chk.flag(~miss & ((out < 0) | (out > MAX_TS_MS)), col,
             lambda v: f"{name} {_short(v)} is outside 1970..9999")
    return out


def _json_text(v: object, name: str, kinds: tuple[type, ...] = (dict,)) -> str:
    """``v`` (an object, or JSON text of one) as compact JSON text; ValueError says why."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError(f"{name} {_short(v)} is not valid JSON") from None
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, kinds):
        raise ValueError(f"{name} must be a JSON object")
    try:
        text = json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ValueError(f"{name} cannot be stored as JSON ({exc})") from None
    if "\\u0000" in text:
        raise ValueError(f"{name} holds a NUL character")
    if len(text.encode("utf-8")) > MAX_JSON_BYTES:
        raise ValueError(f"{name} is over {MAX_JSON_BYTES} bytes as JSON")
    return text


def check_json(col: pd.Series, name: str, chk: Checked) -> np.ndarray:
    """JSON object text per row (None where missing)."""
    out = np.full(len(col), None, dtype=object)
    miss = _missing(col)
    values = col.to_numpy(dtype=object)
    for i in np.flatnonzero(~miss):
        try:
            out[i] = _json_text(values[i], name)
        except ValueError as exc:
            chk.reason[i] = chk.reason[i] if chk.reason[i] is not None else str(exc)
    return out


def check_text(col: pd.Series, name: str, chk: Checked, max_chars: int | None = None,
               required: bool = False) -> np.ndarray:
    out = np.full(len(col), None, dtype=object)
    miss = _missing(col)
    if required:
        chk.flag(miss, col, lambda v: f"{name} is missing")
    values = col.to_numpy(dtype=object)
    for i in np.flatnonzero(~miss):
        v = values[i]
        if not isinstance(v, str):
            v = str(v)
        v = v.strip()
        if "\x00" in v:
            chk.flag(_one(len(col), i), values, lambda _v: f"{name} holds a NUL character")
        elif max_chars is not None and len(v) > max_chars:
            chk.flag(_one(len(col), i), values,
                     lambda _v: f"{name} is longer than {max_chars} characters")
        else:
            out[i] = v
    return out


def _empty_lists(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = []
    return out


def _one(n: int, i: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[i] = True
    return m


def check_tags(col: pd.Series, chk: Checked) -> np.ndarray:
    """Lists of tags: a list (Parquet, JSON), a JSON array text, or ``a|b|c`` text."""
    out = np.full(len(col), None, dtype=object)
    values = col.to_numpy(dtype=object)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[i] = []
            continue
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("["):
                try:
                    v = json.loads(s)
                except ValueError:
                    chk.flag(_one(len(values), i), values,
                             lambda x: f"tags {_short(x)} is not a valid JSON array")
                    continue
            else:
                v = [t for t in s.split("|")]
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            chk.flag(_one(len(values), i), values,
                     lambda x: f"tags {_short(x)} must be strings")
            continue
        tags = list(dict.fromkeys(t.strip() for t in v if t.strip()))
        if any("\x00" in t for t in tags):
            chk.flag(_one(len(values), i), values, lambda x: "tags hold a NUL character")
            continue
        out[i] = tags
    return out


# --- the id mapping -------------------------------------------------------------------------


class IdMapper:
    """External ids to internal ones, through ``external_ids``: known ones read, new ones
    allocated (in the order given) and committed at once on a connection of its own, so
    that a mapping never waits for a load's transaction and never changes."""

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self.cache: dict[tuple[str, str], int] = {}
        self.allocated = 0
        self._conn = None

    def _cursor(self):
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.dsn)
        return self._conn.cursor()

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    def map(self, entity: str, external: np.ndarray) -> np.ndarray:
        """Internal ids of ``external`` (None entries give 0)."""
        out = np.zeros(len(external), dtype=np.int64)
        has = pd.notna(external)
        if not has.any():
            return out
        codes, uniques = pd.factorize(external[has])
        wanted = [u for u in uniques if (entity, u) not in self.cache]
        if wanted:
            self._fetch(entity, wanted)
        table = np.array([self.cache[(entity, u)] for u in uniques], dtype=np.int64)
        out[has] = table[codes]
        return out

    def _fetch(self, entity: str, wanted: list[str]) -> None:
        with self._conn_tx() as cur:
            cur.execute("""
                WITH w AS (SELECT e, o FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS w(e, o)),
                new AS (
                    INSERT INTO external_ids (entity_type, external_id, internal_id)
                    SELECT %(entity)s, e, nextval('external_id_seq')
                    FROM (SELECT e, o FROM w
                          WHERE NOT EXISTS (SELECT 1 FROM external_ids x
                                            WHERE x.entity_type = %(entity)s
                                              AND x.external_id = w.e)
                          ORDER BY o) fresh
                    ON CONFLICT DO NOTHING
                    RETURNING external_id, internal_id)
                SELECT external_id, internal_id, true FROM new
                UNION ALL
                SELECT x.external_id, x.internal_id, false FROM external_ids x
                WHERE x.entity_type = %(entity)s AND x.external_id = ANY(%(ids)s::text[])""",
                        {"ids": wanted, "entity": entity})
            for ext, internal, new in cur.fetchall():
                self.cache[(entity, ext)] = int(internal)
                self.allocated += bool(new)
        missing = [w for w in wanted if (entity, w) not in self.cache]
        if missing:  # allocated meanwhile by another writer: read them now
            with self._conn_tx() as cur:
                cur.execute("SELECT external_id, internal_id FROM external_ids "
                            "WHERE entity_type = %s AND external_id = ANY(%s)",
                            (entity, missing))
                for ext, internal in cur.fetchall():
                    self.cache[(entity, ext)] = int(internal)

    def _conn_tx(self):
        cur = self._cursor()
        conn = self._conn

        class _Tx:
            def __enter__(self_inner):
                return cur

            def __exit__(self_inner, exc_type, *_):
                if exc_type is None:
                    conn.commit()
                else:
                    conn.rollback()
                cur.close()
                return False

        return _Tx()


# --- per kind: validate a chunk into staging rows --------------------------------------------


EVENT_CODES = {t: i + 1 for i, t in enumerate(EVENT_TYPES)}


def stage_events(frame: pd.DataFrame, mapper: IdMapper, chk: Checked) -> pd.DataFrame:
    users, users_ext = check_ids(frame["user_id"], "user_id", chk)
    items, items_ext = check_ids(frame["item_id"], "item_id", chk)
    etype = frame["event_type"].astype(object).where(~_missing(frame["event_type"]), None)
    etype = etype.str.strip().str.lower()
    chk.flag(~etype.isin(EVENT_TYPES).to_numpy(), frame["event_type"],
             lambda v: f"event_type {_short(v)} is not one of {', '.join(EVENT_TYPES)}")
    ts = check_times(frame["timestamp"], "timestamp", chk, required=True)
    value = np.full(len(frame), np.nan)
    if "value" in frame:
        raw = frame["value"]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        miss = _missing(raw)
        chk.flag(~miss & ~np.isfinite(num), raw, lambda v: f"value {_short(v)} is not a number")
        chk.flag(~miss & np.isfinite(num) & ((num < 0) | (num > 10)), raw,
                 lambda v: f"value {_short(v)} is outside 0..10")
        value = np.where(~miss & np.isfinite(num), num, np.nan)
    context = check_json(frame["context"], "context", chk) if "context" in frame \
        else np.full(len(frame), None, dtype=object)
    event_id = np.zeros(len(frame), dtype=np.int64)
    given = np.zeros(len(frame), dtype=bool)
    if "event_id" in frame:
        raw = frame["event_id"]
        miss = _missing(raw)
        vals = raw.to_numpy(dtype=object)
        for i in np.flatnonzero(~miss):
            v = vals[i]
            text = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
            if len(text) > MAX_EVENT_ID_CHARS or "\x00" in text:
                chk.flag(_one(len(vals), i), vals, lambda x: f"event_id must have 1 to "
                                                             f"{MAX_EVENT_ID_CHARS} characters")
                continue
            event_id[i] = ids.stable_event_id(text)
            given[i] = True
    ok = chk.ok
    users = np.where(ok & (users == 0), mapper.map("user", np.where(ok, users_ext, None)), users)
    items = np.where(ok & (items == 0), mapper.map("item", np.where(ok, items_ext, None)), items)
    codes = etype.map(EVENT_CODES).fillna(0).to_numpy(dtype=np.int64)
    hashed = stable_ids(users, items, codes, ts, np.nan_to_num(value, nan=-1.0))
    event_id = np.where(given, event_id, hashed)
    out = pd.DataFrame({"event_id": event_id, "user_id": users, "item_id": items,
                        "event_type": etype.to_numpy(dtype=object), "rating": value,
                        "ts_ms": ts, "context": context})
    return out[ok]


def stage_items(frame: pd.DataFrame, mapper: IdMapper, chk: Checked) -> pd.DataFrame:
    n = len(frame)
    items, items_ext = check_ids(frame["item_id"], "item_id", chk)
    title = check_text(frame["title"], "title", chk, required=True)
    category = check_text(frame["category"], "category", chk, MAX_CATEGORY_CHARS) \
        if "category" in frame else np.full(n, None, dtype=object)
    tags = check_tags(frame["tags"], chk) if "tags" in frame else _empty_lists(n)
    description = check_text(frame["description"], "description", chk) \
        if "description" in frame else np.full(n, None, dtype=object)
    created = check_times(frame["created_at"], "created_at", chk, required=False) \
        if "created_at" in frame else np.zeros(n, dtype=np.int64)
    created_given = ~_missing(frame["created_at"]) if "created_at" in frame \
        else np.zeros(n, dtype=bool)
    attributes = check_json(frame["attributes"], "attributes", chk) \
        if "attributes" in frame else np.full(n, None, dtype=object)
    ok = chk.ok
    items = np.where(ok & (items == 0), mapper.map("item", np.where(ok, items_ext, None)), items)
    out = pd.DataFrame({"item_id": items, "title": title, "category": category, "tags": tags,
                        "description": description,
                        "created_ms": pd.arrays.IntegerArray(np.where(created_given, created, 0),
                                                      mask=~created_given),
                        "attributes": attributes})
    return out[ok]


def stage_users(frame: pd.DataFrame, mapper: IdMapper, chk: Checked) -> pd.DataFrame:
    n = len(frame)
    users, users_ext = check_ids(frame["user_id"], "user_id", chk)
    country = np.full(n, None, dtype=object)
    if "country" in frame:
        raw = frame["country"].to_numpy(dtype=object)
        miss = _missing(frame["country"])
        for i in np.flatnonzero(~miss):
            v = str(raw[i]).strip()
            if len(v) == 2 and v.isascii() and v.isalpha():
                country[i] = v.upper()
            else:
                chk.flag(_one(n, i), raw, lambda x: f"country {_short(x)} is not a two-letter "
                                                    "ISO 3166-1 code")
    created = check_times(frame["created_at"], "created_at", chk, required=False) \
        if "created_at" in frame else np.zeros(n, dtype=np.int64)
    created_given = ~_missing(frame["created_at"]) if "created_at" in frame \
        else np.zeros(n, dtype=bool)
    prefs = np.full(n, None, dtype=object)
    if "preferences" in frame:
        text = check_json(frame["preferences"], "preferences", chk)
        for i in np.flatnonzero(pd.notna(text)):
            try:
                prefs[i] = preferences(json.loads(text[i]), mapper)
            except ValueError as exc:
                chk.reason[i] = chk.reason[i] if chk.reason[i] is not None else str(exc)
    ok = chk.ok
    users = np.where(ok & (users == 0), mapper.map("user", np.where(ok, users_ext, None)), users)
    out = pd.DataFrame({"user_id": users, "country": country,
                        "created_ms": pd.arrays.IntegerArray(np.where(created_given, created, 0),
                                                      mask=~created_given),
                        "preferences": prefs})
    return out[ok]


MAX_PREFERENCE_VALUES = 100


def preferences(value: dict, mapper: IdMapper | None) -> str:
    """Onboarding preferences as stored: ``{"categories": [...], "items": [internal ids]}``
    (liked items given by the client's ids, mapped; other keys are kept as given).
    Raises ValueError naming what is wrong."""
    out = dict(value)
    cats = value.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, str) and 0 < len(c.strip()) <= 50
                                             for c in cats) or len(cats) > MAX_PREFERENCE_VALUES:
        raise ValueError("preferences.categories must be a list of up to "
                         f"{MAX_PREFERENCE_VALUES} category names (1 to 50 characters)")
    out["categories"] = [c.strip() for c in cats]
    liked = value.get("items", [])
    if not isinstance(liked, list) or len(liked) > MAX_PREFERENCE_VALUES:
        raise ValueError(f"preferences.items must be a list of up to {MAX_PREFERENCE_VALUES} "
                         "item ids")
    resolved: list[int | str] = []  # in the client's order
    for v in liked:
        nat = ids.native(v)
        if nat is not None:
            resolved.append(nat)
            continue
        if isinstance(v, bool) or not isinstance(v, str | int) or (
                isinstance(v, str) and ids.problem(v)) or (isinstance(v, int) and v < 1):
            raise ValueError(f"preferences.items holds {_short(v)}, not an item id")
        resolved.append(str(v))
    external = [v for v in resolved if isinstance(v, str)]
    if external:
        if mapper is None:
            raise ValueError("preferences.items: external ids need the id mapping")
        mapped = dict(zip(external, mapper.map("item", np.array(external, dtype=object)).tolist(),
                          strict=True))
        resolved = [mapped[v] if isinstance(v, str) else v for v in resolved]
    internal = [int(v) for v in resolved]
    out["items"] = list(dict.fromkeys(internal))
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


STAGERS = {"events": stage_events, "items": stage_items, "users": stage_users}


# --- writing ----------------------------------------------------------------------------------


def _copy(cur: Cursor, table: str, frame: pd.DataFrame, quote: str = "") -> None:
    """COPY ``frame`` (CSV; empty unquoted fields are NULL) into ``table``; ``quote``
    names one column to quote (``"timestamp"``)."""
    buf = io.StringIO()
    frame.to_csv(buf, header=False, index=False, na_rep="")
    buf.seek(0)
    cols = ", ".join(quote if quote and c == quote.strip('"') else c for c in frame.columns)
    cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)", buf)


def _tags_literal(tags: list[str]) -> str:
    return "{" + ",".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for t in tags) + "}"


class Writer:
    """One file's writes, inside the caller's transaction."""

    def __init__(self, cur: Cursor, kind: str, today: date) -> None:
        self.cur = cur
        self.kind = kind
        self.written = 0
        self.daily_from = today - timedelta(days=HOT_DAYS)
        self.days: tuple[date, date] | None = None
        self.user_first: pd.Series | None = None  # events: each user's first ts_ms
        if kind == "events":
            cur.execute("""CREATE TEMP TABLE stage_events (
                             event_id BIGINT, user_id BIGINT, item_id BIGINT, event_type TEXT,
                             rating REAL, ts_ms BIGINT, context JSONB) ON COMMIT DROP""")
        elif kind == "items":
            cur.execute("""CREATE TEMP TABLE stage_items (
                             item_id BIGINT, title TEXT, category TEXT, tags TEXT[],
                             description TEXT, created_ms BIGINT, attributes JSONB)
                           ON COMMIT DROP""")
        else:
            cur.execute("""CREATE TEMP TABLE stage_users (
                             user_id BIGINT, country TEXT, created_ms BIGINT,
                             preferences JSONB) ON COMMIT DROP""")

    def write(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        getattr(self, f"_{self.kind}")(rows)

    def _events(self, rows: pd.DataFrame) -> None:
        """COPY the chunk straight into ``interactions`` under a savepoint (new events:
        the fast path); if any row is already stored (a unique violation), roll the
        savepoint back and insert the chunk through staging ``ON CONFLICT DO NOTHING``."""
        cur = self.cur
        lo = datetime.fromtimestamp(int(rows["ts_ms"].min()) // 1000, UTC).date()
        hi = datetime.fromtimestamp(int(rows["ts_ms"].max()) // 1000, UTC).date()
        if self.days is None or lo < self.days[0] or hi > self.days[1]:
            cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s, %s)",
                        (lo, hi, self.daily_from))
            self.days = (min(lo, self.days[0]), max(hi, self.days[1])) if self.days else (lo, hi)
        rows = rows.sort_values("ts_ms", kind="stable")  # one partition's rows together
        firsts = rows.groupby("user_id", sort=False)["ts_ms"].min()
        self.user_first = firsts if self.user_first is None else \
            pd.concat([self.user_first, firsts]).groupby(level=0).min()
        stamps = np.datetime_as_string(rows["ts_ms"].to_numpy().astype("datetime64[ms]"),
                                       unit="ms", timezone="UTC")
        direct = rows.assign(timestamp=stamps)
        direct = direct[["event_id", "user_id", "item_id", "event_type", "rating",
                         "timestamp", "context"]]
        cur.execute("SAVEPOINT recs_chunk")
        try:
            _copy(cur, "interactions", direct, quote='"timestamp"')
            self.written += len(rows)
            cur.execute("RELEASE SAVEPOINT recs_chunk")
            return
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT recs_chunk")
        _copy(cur, "stage_events", rows)
        cur.execute("""
            INSERT INTO interactions (event_id, user_id, item_id, event_type, rating,
                                      "timestamp", context)
            SELECT event_id, user_id, item_id, event_type, rating,
                   to_timestamp(ts_ms / 1000.0), context
            FROM stage_events
            ORDER BY ts_ms  -- rows of one partition together: faster routing
            ON CONFLICT DO NOTHING""")
        self.written += cur.rowcount
        cur.execute("TRUNCATE stage_events")

    def finish(self) -> None:
        """After the last chunk: users seen in the file's events exist, created no later
        than their first event (one upsert per file)."""
        if self.kind != "events" or self.user_first is None:
            return
        frame = self.user_first.rename("ts_ms").rename_axis("user_id").reset_index()
        self.cur.execute("CREATE TEMP TABLE stage_event_users (user_id BIGINT, ts_ms BIGINT) "
                         "ON COMMIT DROP")
        _copy(self.cur, "stage_event_users", frame)
        self.cur.execute("""
            INSERT INTO users AS u (user_id, created_at)
            SELECT user_id, to_timestamp(ts_ms / 1000.0) FROM stage_event_users
            ON CONFLICT (user_id) DO UPDATE SET created_at = EXCLUDED.created_at
             WHERE EXCLUDED.created_at < u.created_at""")

    def _items(self, rows: pd.DataFrame) -> None:
        # A changed item (title, category, tags, description, attributes) gets
        # updated_at = now(): the hourly run embeds and places it (jobs/hourly.py).
        cur = self.cur
        rows = rows.assign(tags=rows["tags"].map(_tags_literal))
        _copy(cur, "stage_items", rows)
        cur.execute("""
            UPDATE items i
               SET title = s.title, category = s.category, tags = s.tags,
                   description = s.description, attributes = COALESCE(s.attributes, '{}'),
                   created_at = COALESCE(to_timestamp(s.created_ms / 1000.0), i.created_at),
                   updated_at = now()
              FROM stage_items s
             WHERE s.item_id = i.item_id
               AND (i.title, i.category, i.tags, i.description, i.attributes, i.created_at)
                   IS DISTINCT FROM
                   (s.title, s.category, s.tags, s.description, COALESCE(s.attributes, '{}'),
                    COALESCE(to_timestamp(s.created_ms / 1000.0), i.created_at))""")
        self.written += cur.rowcount
        cur.execute("""
            INSERT INTO items (item_id, title, category, tags, description, created_at,
                               updated_at, attributes)
            SELECT item_id, title, category, tags, description,
                   COALESCE(to_timestamp(created_ms / 1000.0), now()), now(),
                   COALESCE(attributes, '{}')
            FROM stage_items s
            WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = s.item_id)
            ON CONFLICT (item_id) DO NOTHING""")
        self.written += cur.rowcount
        cur.execute("TRUNCATE stage_items")

    def _users(self, rows: pd.DataFrame) -> None:
        # Given fields replace the stored ones, missing ones keep them; new users are
        # created (now() when no created_at is given).
        cur = self.cur
        _copy(cur, "stage_users", rows)
        cur.execute("""
            UPDATE users u
               SET country = COALESCE(s.country, u.country),
                   preferences = COALESCE(s.preferences, u.preferences),
                   created_at = COALESCE(to_timestamp(s.created_ms / 1000.0), u.created_at)
              FROM stage_users s
             WHERE s.user_id = u.user_id
               AND (u.country, u.preferences, u.created_at) IS DISTINCT FROM
                   (COALESCE(s.country, u.country), COALESCE(s.preferences, u.preferences),
                    COALESCE(to_timestamp(s.created_ms / 1000.0), u.created_at))""")
        self.written += cur.rowcount
        cur.execute("""
            INSERT INTO users (user_id, created_at, country, preferences)
            SELECT user_id, COALESCE(to_timestamp(created_ms / 1000.0), now()), country,
                   COALESCE(preferences, '{}')
            FROM stage_users s
            WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)
            ON CONFLICT (user_id) DO NOTHING""")
        self.written += cur.rowcount
        cur.execute("TRUNCATE stage_users")

# --- the load ---------------------------------------------------------------------------------


def _line_of(path: Path, record: int, invalid: set[int]) -> int:
    """The physical line of the 0-based ``record`` of a CSV file, counted as the reader
    counts (blank lines and the ``invalid`` lines it skipped left out); for error
    messages only, so the rescan costs nothing on a clean load."""
    raw, stream = _open_text(path)
    with raw, stream:
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
        next(reader, None)
        n = -1
        for row in reader:
            if row and any(row) and reader.line_num not in invalid:
                n += 1
                if n == record:
                    return reader.line_num
    return 0


def load(kind: str, path: Path | str, *, dsn: str | None = None,
         mapping: dict[str, str] | None = None, skip_bad: bool = False,
         progress: Callable[[Progress], None] | None = None, chunk_rows: int = CHUNK_ROWS,
         today: date | None = None) -> ImportReport:
    """Load ``path`` (a file or a folder of files) as ``kind``; see the module's doc."""
    if kind not in KINDS:
        raise ImportSpecError(f"{kind!r}: expected one of {', '.join(KINDS)}")
    mapping = dict(mapping or {})
    files = discover(path)
    today = today or datetime.now(UTC).date()
    options = {"kind": kind, "map": sorted(mapping.items()), "skip_bad": skip_bad}
    report = ImportReport(kind, files=len(files))
    sizes = [max(f.stat().st_size, 1) for f in files]
    total = float(sum(sizes))
    t0 = time.perf_counter()
    mapper = IdMapper(dsn)
    done_bytes = 0.0
    try:
        for index, file in enumerate(files):
            digest = file_digest(file, options)
            fmt = format_of(file)
            with db.transaction(dsn) as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
                cur.execute("SELECT 1 FROM loads WHERE source = %s AND digest = %s",
                            (f"import:{kind}", digest))
                if cur.fetchone() is not None:
                    log.info("%s: already loaded, skipped", file)
                    report.files_already += 1
                else:
                    def tick(rows: int, frac: float, i: int = index, f: Path = file,
                             d: float = done_bytes) -> None:
                        if progress is not None:
                            progress(Progress(kind, rows, (d + frac * sizes[i]) / total,
                                              str(f), i + 1, len(files),
                                              time.perf_counter() - t0))

                    _, written, skipped = _load_file(cur, kind, file, fmt, mapping, skip_bad,
                                                     mapper, chunk_rows, today, report, tick)
                    cur.execute("INSERT INTO loads (source, digest, users, items, "
                                "interactions, skipped) VALUES (%s, %s, %s, %s, %s, %s)",
                                (f"import:{kind}", digest, written if kind == "users" else 0,
                                 written if kind == "items" else 0,
                                 written if kind == "events" else 0, skipped))
                    report.files_loaded += 1
                    report.written += written
            done_bytes += sizes[index]
    finally:
        mapper.close()
    report.mapped_ids = mapper.allocated
    report.seconds = time.perf_counter() - t0
    if progress:
        progress(Progress(kind, report.rows, 1.0, str(files[-1]), len(files), len(files),
                          report.seconds))
    return report


def _ahead(items: Iterator[tuple], depth: int = 2) -> Iterator[tuple]:
    """``items`` produced by a thread up to ``depth`` ahead of the consumer, so that
    parsing and validating the next chunk overlaps the database writing this one. An
    exception in the thread is raised here, in order; a consumer that stops early (a bad
    row) stops the thread at its next item."""
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=run, name="recs-import-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _load_file(cur: Cursor, kind: str, file: Path, fmt: str, mapping: dict[str, str],
               skip_bad: bool, mapper: IdMapper, chunk_rows: int, today: date,
               report: ImportReport, tick: Callable[[int, float], None]
               ) -> tuple[int, int, int]:
    """(rows read, rows written, rows skipped) of one file, in ``cur``'s transaction."""
    writer = Writer(cur, kind, today)
    bad: list[tuple[int, str]] = []  # (line, reason) found by the reader itself
    invalid_lines: set[int] = set()
    unit = "row" if fmt == "parquet" else "line"
    rows_read = skipped = 0
    seen: set[int] = set()
    jsonl_lines: list[int] = []

    def refuse(line: int, reason: str) -> None:
        nonlocal skipped
        err = BadRowError(file, line, reason, unit)
        if not skip_bad:
            raise err
        skipped += 1
        if len(report.skipped_reasons) < KEEP_REASONS:
            report.skipped_reasons.append(str(err))

    if fmt == "jsonl":
        reader = _read_jsonl(file, kind, mapping, chunk_rows, bad, jsonl_lines)
    else:
        reader = READERS[fmt](file, kind, mapping, chunk_rows, bad)

    def prepared() -> Iterator[tuple]:
        """Read and validate (in a thread, a chunk ahead of the writes)."""
        for chunk in reader:
            reader_bad, lines = sorted(bad), list(jsonl_lines)
            bad.clear()
            frame = chunk.frame.reset_index(drop=True)
            chk = Checked(len(frame))
            staged = STAGERS[kind](frame, mapper, chk)
            if kind in ("items", "users"):  # one row per id in a file
                key = f"{kind[:-1]}_id"
                dup_rows = []
                for pos, ident in zip(staged.index, staged[key].to_numpy(), strict=True):
                    if int(ident) in seen:
                        dup_rows.append(pos)
                        chk.reason[pos] = f"{key} appears twice in the file"
                    seen.add(int(ident))
                staged = staged.drop(index=dup_rows)
            yield chunk, len(frame), staged, chk, reader_bad, lines
        yield None, 0, None, None, sorted(bad), []

    for chunk, n_rows, staged, chk, reader_bad, lines in _ahead(prepared()):
        for line, reason in reader_bad:
            invalid_lines.add(line)
            refuse(line, reason)
        if chunk is None:
            break
        for pos in np.flatnonzero(~chk.ok):
            if skip_bad and len(report.skipped_reasons) >= KEEP_REASONS:
                skipped += 1
                continue
            if fmt == "jsonl":
                line = lines[pos]
            elif fmt == "parquet":
                line = chunk.first + pos + 1
            else:
                line = _line_of(file, chunk.first + pos, invalid_lines)
            refuse(line, chk.reason[pos])
        writer.write(staged)
        rows_read += n_rows
        report.rows += n_rows
        tick(report.rows, chunk.fraction)
    writer.finish()
    report.skipped += skipped
    log.info("%s: %d rows read, %d written, %d skipped", file, rows_read, writer.written,
             skipped)
    return rows_read, writer.written, skipped


def _read_jsonl(path: Path, kind: str, mapping: dict[str, str], chunk_rows: int,
                      bad: list[tuple[int, str]], lines: list[int]) -> Iterator[Chunk]:
    """:func:`_read_jsonl` that also fills ``lines`` with each row's line, per chunk."""
    required, optional = SCHEMAS[kind]
    names = {mapping.get(n, n): n for n in required + optional}
    raw, stream = _open_text(path)
    with raw, stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig")
        rows: list[dict] = []
        for n, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                bad.append((n, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                bad.append((n, "not a JSON object"))
                continue
            missing = [src for src, name in names.items()
                       if name in required and src not in obj]
            if missing:
                bad.append((n, f"no {', '.join(repr(m) for m in missing)}"))
                continue
            if len(rows) == 0:
                lines.clear()
            rows.append({names[k]: v for k, v in obj.items() if k in names})
            lines.append(n)
            if len(rows) >= chunk_rows:
                yield Chunk(_frame(rows, required + optional), -1, _fraction(raw, path))
                rows = []
        if rows:
            yield Chunk(_frame(rows, required + optional), -1, 1.0)
