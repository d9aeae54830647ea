"""Readers for the MovieLens layouts, keeping the original ids, timestamps and titles.

Three layouts are recognised by :func:`detect`:

* ``latest`` (ml-latest-small, ml-latest, ml-20m, ml-25m): ``ratings.csv``,
  ``movies.csv`` and optional ``tags.csv``, UTF-8 CSV with a header;
* ``100k``: ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, latin-1, 19 genre
  flags);
* ``1m``: ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1); ``users.dat``
  (demographics) is not read.

Mapping: each rating is an event of type ``rating``; an item's category is its first
genre, its tags are its genres lower-cased plus up to :data:`MAX_USER_TAGS` distinct user
tags (most used first, then alphabetical). Reading streams in chunks; a bad row raises
:class:`BadRowError`, or is counted in :class:`BadRows` when skipping bad rows.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.ingest import EVENT_COLUMNS, stable_ids

LATEST, ML100K, ML1M = "latest", "100k", "1m"
NO_GENRES = "(no genres listed)"
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western")
MAX_USER_TAGS = 20
MAX_ID = 2**63 - 1
MAX_TS = 253_402_300_799  # 9999-12-31T23:59:59Z
CHUNK_ROWS = 100_000
KEEP_REASONS = 5

_HEADERS = {
    "ratings.csv": ("userId", "movieId", "rating", "timestamp"),
    "movies.csv": ("movieId", "title", "genres"),
    "tags.csv": ("userId", "movieId", "tag", "timestamp"),
}


class BadRowError(ValueError):
    """A row of a MovieLens file that cannot be loaded; names the file, line and reason."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path.name}:{line}: {reason}")


@dataclass
class BadRows:
    """Bad rows skipped so far: a count per file and the first few reasons of each."""

    keep: int = KEEP_REASONS
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, err: BadRowError) -> None:
        name = err.path.name
        self.counts[name] = self.counts.get(name, 0) + 1
        kept = self.reasons.setdefault(name, [])
        if len(kept) < self.keep:
            kept.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def first_reasons(self) -> tuple[str, ...]:
        return tuple(r for name in self.reasons for r in self.reasons[name])


@dataclass(frozen=True)
class MovieLensFiles:
    """The files of one MovieLens dataset and its layout."""

    root: Path
    layout: str
    ratings: Path
    movies: Path
    tags: Path | None = None

    @property
    def inputs(self) -> tuple[Path, ...]:
        """Files that are read (and hashed into the load digest), in a fixed order."""
        return tuple(p for p in (self.ratings, self.movies, self.tags) if p is not None)


def detect(path: Path | str) -> MovieLensFiles:
    """Recognise the layout of the MovieLens folder ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    if (root / "ratings.csv").is_file() and (root / "movies.csv").is_file():
        tags = root / "tags.csv"
        return MovieLensFiles(root, LATEST, root / "ratings.csv", root / "movies.csv",
                              tags if tags.is_file() else None)
    if (root / "u.data").is_file() and (root / "u.item").is_file():
        return MovieLensFiles(root, ML100K, root / "u.data", root / "u.item")
    if (root / "ratings.dat").is_file() and (root / "movies.dat").is_file():
        return MovieLensFiles(root, ML1M, root / "ratings.dat", root / "movies.dat")
    raise ValueError(f"{root}: no MovieLens layout found (expected ratings.csv + movies.csv, "
                     "u.data + u.item, or ratings.dat + movies.dat)")


@dataclass(frozen=True)
class Movie:
    item_id: int
    title: str
    genres: tuple[str, ...]

    @property
    def category(self) -> str | None:
        """The first genre, or None when the movie has none."""
        return self.genres[0] if self.genres else None


class _Bad(Exception):
    """A row-level problem; turned into :class:`BadRowError` with file and line."""


# --- Row sources -----------------------------------------------------------------------


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    expected = _HEADERS[path.name]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        if tuple(h.strip().lstrip("\ufeff") for h in header) != expected:
            raise BadRowError(path, 1, f"header {','.join(header)!r} is not "
                                       f"{','.join(expected)!r}")
        for row in reader:
            if row:
                yield reader.line_num, row


def _split_rows(path: Path, sep: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line:
                yield n, line.split(sep)


def _rows(path: Path, layout: str) -> Iterator[tuple[int, list[str]]]:
    if layout == LATEST:
        return _csv_rows(path)
    if layout == ML100K:
        sep = "\t" if path.name == "u.data" else "|"
        return _split_rows(path, sep, "latin-1")
    return _split_rows(path, "::", "latin-1")


def _parsed(path: Path, layout: str, parse: Callable[[list[str]], Any],
            bad: BadRows | None) -> Iterator[Any]:
    """Parsed rows of ``path``; a bad row raises, or is counted in ``bad``."""
    for line, fields in _rows(path, layout):
        try:
            yield parse(fields)
        except _Bad as exc:
            err = BadRowError(path, line, str(exc))
            if bad is None:
                raise err from None
            bad.add(err)


# --- Field parsers -----------------------------------------------------------------------


def _fields(fields: list[str], n: int) -> None:
    if len(fields) != n:
        raise _Bad(f"expected {n} fields, got {len(fields)}")


def _int(name: str, s: str, hi: int = MAX_ID) -> int:
    s = s.strip()
    if not (s.isascii() and s.isdigit()):
        raise _Bad(f"{name} {s!r} is not an integer")
    v = int(s)
    if v > hi:
        raise _Bad(f"{name} {v} is out of range")
    return v


def _rating(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise _Bad(f"rating {s.strip()!r} is not a number") from None
    if not (math.isfinite(v) and 0.0 <= v <= 10.0):
        raise _Bad(f"rating {s.strip()!r} is outside 0..10")
    return v


def _parse_rating(fields: list[str]) -> tuple[int, int, float, int]:
    _fields(fields, 4)
    return (_int("userId", fields[0]), _int("movieId", fields[1]), _rating(fields[2]),
            _int("timestamp", fields[3], MAX_TS))


def _title(s: str) -> str:
    s = s.strip()
    if not s:
        raise _Bad("title is empty")
    return s


def _parse_movie_latest(fields: list[str]) -> Movie:
    _fields(fields, 3)
    genres = () if fields[2].strip() in (NO_GENRES, "") else tuple(
        g.strip() for g in fields[2].split("|") if g.strip())
    return Movie(_int("movieId", fields[0]), _title(fields[1]), genres)


def _parse_movie_100k(fields: list[str]) -> Movie:
    _fields(fields, 5 + len(ML100K_GENRES))
    flags = [f.strip() for f in fields[5:]]
    for f in flags:
        if f not in ("0", "1"):
            raise _Bad(f"genre flag {f!r} is not 0 or 1")
    genres = tuple(g for g, f in zip(ML100K_GENRES, flags, strict=True)
                   if f == "1" and g != "unknown")
    return Movie(_int("movieId", fields[0]), _title(fields[1]), genres)


def _parse_tag(fields: list[str]) -> tuple[int, int, str, int]:
    _fields(fields, 4)
    return (_int("userId", fields[0]), _int("movieId", fields[1]), fields[2].strip().lower(),
            _int("timestamp", fields[3], MAX_TS))


# --- Readers -----------------------------------------------------------------------------


def read_movies(files: MovieLensFiles, bad: BadRows | None = None) -> dict[int, Movie]:
    """All movies by id; a duplicate id is a bad row."""
    parse = {LATEST: _parse_movie_latest, ML100K: _parse_movie_100k,
             ML1M: _parse_movie_latest}[files.layout]
    movies: dict[int, Movie] = {}

    def parse_new(fields: list[str]) -> Movie:
        movie = parse(fields)
        if movie.item_id in movies:
            raise _Bad(f"movieId {movie.item_id} appears twice")
        return movie

    for movie in _parsed(files.movies, files.layout, parse_new, bad):
        movies[movie.item_id] = movie
    return movies


def read_tags(files: MovieLensFiles, movie_ids: set[int] | dict[int, Movie],
              bad: BadRows | None = None) -> dict[int, tuple[str, ...]]:
    """Distinct user tags per item (lower-cased), most used first, at most 20 each."""
    if files.tags is None:
        return {}
    movies_name = files.movies.name

    def parse(fields: list[str]) -> tuple[int, int, str, int]:
        row = _parse_tag(fields)
        if row[1] not in movie_ids:
            raise _Bad(f"movieId {row[1]} is not in {movies_name}")
        return row

    counts: dict[int, Counter[str]] = {}
    for _user, item, tag, _ts in _parsed(files.tags, files.layout, parse, bad):
        if tag:
            counts.setdefault(item, Counter())[tag] += 1
    return {item: tuple(t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
            for item, c in counts.items()}


def item_tags(movie: Movie, user_tags: tuple[str, ...] = ()) -> list[str]:
    """Genres lower-cased, then up to :data:`MAX_USER_TAGS` user tags not already there."""
    tags = list(dict.fromkeys(g.lower() for g in movie.genres))
    extra = [t for t in user_tags if t not in tags][:MAX_USER_TAGS]
    return tags + extra


def event_ids(user_id: Any, item_id: Any, ts: Any, rating: Any) -> np.ndarray:
    """Stable 63-bit event ids of ratings: a hash of (user, item, unix seconds, rating)."""
    return stable_ids(user_id, item_id, ts, np.asarray(rating, dtype=np.float64))


def iter_events(files: MovieLensFiles, movie_ids: set[int] | dict[int, Movie],
                bad: BadRows | None = None,
                chunk_size: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Ratings as event frames (:data:`EVENT_COLUMNS`) of at most ``chunk_size`` rows."""
    movies_name = files.movies.name

    def parse(fields: list[str]) -> tuple[int, int, float, int]:
        row = _parse_rating(fields)
        if row[1] not in movie_ids:
            raise _Bad(f"movieId {row[1]} is not in {movies_name}")
        return row

    buf: list[tuple[int, int, float, int]] = []
    for row in _parsed(files.ratings, files.layout, parse, bad):
        buf.append(row)
        if len(buf) >= chunk_size:
            yield _frame(buf)
            buf = []
    if buf:
        yield _frame(buf)


def _frame(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    users, items, ratings, ts = (np.array(c) for c in zip(*rows, strict=True))
    users, items, ts = users.astype(np.int64), items.astype(np.int64), ts.astype(np.int64)
    ratings = ratings.astype(np.float64)
    frame = pd.DataFrame({
        "event_id": event_ids(users, items, ts, ratings), "user_id": users, "item_id": items,
        "event_type": "rating", "rating": ratings, "ts": ts})
    return frame[list(EVENT_COLUMNS)]


# --- Whole dataset -----------------------------------------------------------------------


@dataclass
class MovieLensData:
    """A validated MovieLens dataset: catalog, per-entity first times and bad-row counts.

    Events are not held in memory; :meth:`iter_events` streams them again from disk.
    """

    files: MovieLensFiles
    movies: dict[int, Movie]
    user_tags: dict[int, tuple[str, ...]]
    user_first: dict[int, int]
    item_first: dict[int, int]
    n_ratings: int
    min_ts: int | None
    max_ts: int | None
    bad: BadRows

    def items(self) -> Iterator[tuple[int, str, str | None, list[str], int | None]]:
        """(item_id, title, category, tags, created unix seconds) per movie, by id."""
        for item_id in sorted(self.movies):
            movie = self.movies[item_id]
            yield (item_id, movie.title, movie.category,
                   item_tags(movie, self.user_tags.get(item_id, ())),
                   self.item_first.get(item_id, self.min_ts))

    def users(self) -> Iterator[tuple[int, int]]:
        """(user_id, unix seconds of the first event) per user, by id."""
        for user_id in sorted(self.user_first):
            yield user_id, self.user_first[user_id]

    def iter_events(self, chunk_size: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """The valid ratings again, as event frames (bad rows skipped silently)."""
        skip = BadRows() if self.bad.total else None
        return iter_events(self.files, self.movies, skip, chunk_size)


def read(path: Path | str | MovieLensFiles, *, skip_bad: bool = False,
         chunk_size: int = CHUNK_ROWS) -> MovieLensData:
    """Validate a whole dataset in one streaming pass and collect what a load needs."""
    files = path if isinstance(path, MovieLensFiles) else detect(path)
    bad = BadRows()
    sink = bad if skip_bad else None
    movies = read_movies(files, sink)
    user_tags = read_tags(files, movies, sink)
    user_first: dict[int, int] = {}
    item_first: dict[int, int] = {}
    n, lo, hi = 0, MAX_TS + 1, -1
    for chunk in iter_events(files, movies, sink, chunk_size):
        n += len(chunk)
        ts = chunk["ts"]
        lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))
        for key, first in (("user_id", user_first), ("item_id", item_first)):
            mins = ts.groupby(chunk[key]).min()
            for k, v in zip(mins.index.tolist(), mins.tolist(), strict=True):
                if v < first.get(k, MAX_TS + 1):
                    first[k] = v
    return MovieLensData(files, movies, user_tags, user_first, item_first, n,
                         lo if n else None, hi if n else None, bad)
