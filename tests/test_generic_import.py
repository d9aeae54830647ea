"""Generic import (`recs load events|items|users PATH`) against the real private Postgres.

Every fixture file is written by hand, so each loaded value, line number and id can be
checked exactly.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from cli import main as cli
from core import ids
from jobs.ingest import generic
from jobs.ingest.generic import BadRowError, ImportSpecError

TODAY = date(2026, 12, 5)


def rows(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


EVENTS = [
    "customer_id,item_id,event_type,timestamp,value,context,event_id",
    'user_789,item_12345,view,2026-11-01T10:30:00Z,,"{""source"": ""home""}",',
    "user_789,item_12345,rating,1764585000,4.5,,",  # epoch seconds
    "42,item_9,purchase,1764585000123,,,order-1",  # epoch milliseconds, a native user id
    "user_790,7,click,2026-11-02 08:00:00,,,",  # naive ISO: UTC
]


def load_events(dsn, path, **kw):
    return generic.load("events", path, dsn=dsn, mapping={"user_id": "customer_id"},
                        today=TODAY, **kw)


def test_events_csv_gz_with_mapped_ids_times_and_a_column_map(dsn, tmp_path):
    path = write(tmp_path / "events.csv.gz", EVENTS)
    report = load_events(dsn, path)
    assert (report.rows, report.written, report.skipped, report.mapped_ids) == (4, 4, 0, 4)
    mapping = dict(rows(dsn, "SELECT entity_type || ':' || external_id, internal_id "
                             "FROM external_ids"))
    assert set(mapping) == {"user:user_789", "user:user_790", "item:item_12345",
                            "item:item_9"}
    assert all(v >= ids.MAPPED_ID_BASE for v in mapping.values())
    got = rows(dsn, """SELECT user_id, item_id, event_type, rating,
                              extract(epoch FROM "timestamp")::float8, context
                       FROM interactions ORDER BY "timestamp", event_type""")
    u789, i12345 = mapping["user:user_789"], mapping["item:item_12345"]
    assert got == [
        (u789, i12345, "rating", 4.5, 1764585000.0, None),
        (42, mapping["item:item_9"], "purchase", None, 1764585000.123, None),
        (u789, i12345, "view", None,
         datetime(2026, 11, 1, 10, 30, tzinfo=UTC).timestamp(), {"source": "home"}),
        (mapping["user:user_790"], 7, "click", None,
         datetime(2026, 11, 2, 8, tzinfo=UTC).timestamp(), None),
    ]
    # A client event id is hashed exactly as the reader hashes posted ones.
    assert rows(dsn, "SELECT event_id FROM interactions WHERE event_type = 'purchase'") == \
        [(ids.stable_event_id("order-1"),)]
    # Users seen in events exist, created at their first event.
    assert rows(dsn, "SELECT count(*) FROM users")[0][0] == 3


def test_reloading_adds_nothing_and_the_mapping_is_stable(dsn, tmp_path):
    path = write(tmp_path / "events.csv", EVENTS)
    load_events(dsn, path)
    before = rows(dsn, "SELECT * FROM external_ids ORDER BY internal_id")
    again = load_events(dsn, path)
    assert (again.files_already, again.files_loaded, again.written) == (1, 0, 0)
    # The same rows in another order (another file): read again, nothing new stored.
    other = write(tmp_path / "other.csv", [EVENTS[0], *reversed(EVENTS[1:])])
    third = load_events(dsn, other)
    assert (third.files_loaded, third.rows, third.written, third.mapped_ids) == (1, 4, 0, 0)
    assert rows(dsn, "SELECT count(*) FROM interactions")[0][0] == 4
    assert rows(dsn, "SELECT * FROM external_ids ORDER BY internal_id") == before


def test_a_bad_row_names_file_line_and_reason_and_writes_nothing(dsn, tmp_path):
    lines = [*EVENTS, "", "user_1,item_1,like,2026-11-01T00:00:00Z,,,"]  # line 7 (6 blank)
    path = write(tmp_path / "bad.csv", lines)
    with pytest.raises(BadRowError) as err:
        load_events(dsn, path)
    assert str(err.value) == (f"{path}:7: event_type 'like' is not one of click, view, "
                              "purchase, rating")
    assert rows(dsn, "SELECT (SELECT count(*) FROM interactions), (SELECT count(*) FROM loads), "
                     "(SELECT count(*) FROM users)") == [(0, 0, 0)]


@pytest.mark.parametrize("line, reason", [
    ("u,i,view,yesterday,,,", "timestamp 'yesterday' is not ISO-8601 or epoch"),
    ("u,i,view,2026-11-01T00:00:00Z,11,,", "value '11' is outside 0..10"),
    ("u,i,view,2026-11-01T00:00:00Z,,[1],", "context must be a JSON object"),
    (",i,view,2026-11-01T00:00:00Z,,,", "user_id is missing"),
    ("u 1,i,view,2026-11-01T00:00:00Z,,,", "user_id 'u 1' holds whitespace"),
    ("u,a/b,view,2026-11-01T00:00:00Z,,,", "item_id 'a/b' holds whitespace, a control "
                                           "character or a slash"),
    ("000,i,view,2026-11-01T00:00:00Z,,,", "user_id '000' is not a positive id"),
    ("u,i,view", "expected 7 fields, got 3"),
])
def test_each_check_names_its_reason(dsn, tmp_path, line, reason):
    path = write(tmp_path / "e.csv", [EVENTS[0], EVENTS[1], line])
    with pytest.raises(BadRowError) as err:
        load_events(dsn, path)
    assert str(err.value).startswith(f"{path}:3: {reason}")


def test_skip_bad_counts_and_loads_the_rest(dsn, tmp_path):
    path = write(tmp_path / "e.csv", [*EVENTS, "u,i,view", "u,i,like,1764585000,,,"])
    report = load_events(dsn, path, skip_bad=True)
    assert (report.rows, report.written, report.skipped) == (5, 4, 2)
    assert report.skipped_reasons == [f"{path}:6: expected 7 fields, got 3",
                                      f"{path}:7: event_type 'like' is not one of click, "
                                      "view, purchase, rating"]
    assert rows(dsn, "SELECT skipped FROM loads")[0][0] == 2


def test_a_stopped_folder_load_resumes_with_the_file_it_stopped_at(dsn, tmp_path):
    folder = tmp_path / "history"
    folder.mkdir()
    write(folder / "2026-10.csv", EVENTS[:3])
    write(folder / "2026-11.csv", [EVENTS[0], EVENTS[3], "x,y,view,never,,,"])
    write(folder / "notes.txt", ["not data"])
    with pytest.raises(BadRowError, match="2026-11.csv:3"):
        load_events(dsn, folder)
    assert rows(dsn, "SELECT count(*) FROM interactions")[0][0] == 2  # the first file only
    write(folder / "2026-11.csv", [EVENTS[0], EVENTS[3], EVENTS[4]])
    report = load_events(dsn, folder)
    assert (report.files, report.files_already, report.files_loaded, report.written) == \
        (2, 1, 1, 2)
    assert rows(dsn, "SELECT count(*) FROM interactions")[0][0] == 4


def test_parquet_items_and_jsonl_users_with_preferences(dsn, tmp_path):
    items = pd.DataFrame({
        "sku": ["item_1", "item_2", "3"],
        "title": ["Red shoes", "Blue hat", "Green scarf"],
        "category": ["Shoes", "Hats", None],
        "tags": [["red", "leather"], [], None],
        "description": ["Shiny", None, "Warm"],
        "created_at": pd.to_datetime(["2026-01-01T00:00:00Z", None, "2026-02-01T12:00:00Z"],
                                     utc=True),
        "attributes": ['{"price": 10}', None, '{"size": "M"}'],
    })
    items.to_parquet(tmp_path / "items.parquet")
    report = generic.load("items", tmp_path / "items.parquet", dsn=dsn,
                          mapping={"item_id": "sku"})
    assert (report.rows, report.written) == (3, 3)
    mapped = dict(rows(dsn, "SELECT external_id, internal_id FROM external_ids"))
    got = rows(dsn, "SELECT item_id, title, category, tags, description, attributes, "
                    "extract(epoch FROM created_at)::bigint FROM items ORDER BY title")
    assert got[0] == (mapped["item_2"], "Blue hat", "Hats", [], None, {}, got[0][6])
    assert got[1] == (3, "Green scarf", None, [], "Warm", {"size": "M"}, 1769947200)
    assert got[2] == (mapped["item_1"], "Red shoes", "Shoes", ["red", "leather"], "Shiny",
                      {"price": 10}, 1767225600)

    users = tmp_path / "users.jsonl.gz"
    write(users, [
        json.dumps({"user_id": "user_789", "country": "fr", "created_at": 1700000000,
                    "preferences": {"categories": ["Shoes"], "items": ["item_1", 3]}}),
        "",
        json.dumps({"user_id": 5, "extra": "ignored"}),
    ])
    report = generic.load("users", users, dsn=dsn)
    assert (report.rows, report.written) == (2, 2)
    u789 = rows(dsn, "SELECT internal_id FROM external_ids WHERE external_id = 'user_789'")
    got = rows(dsn, "SELECT user_id, country, preferences, "
                    "extract(epoch FROM created_at)::bigint FROM users ORDER BY user_id")
    assert got[0][:3] == (5, None, {})
    assert got[1] == (u789[0][0], "FR",
                      {"categories": ["Shoes"], "items": [mapped["item_1"], 3]}, 1700000000)
    # A bad JSON line names its line (the blank line counts).
    write(users, [json.dumps({"user_id": 6}), "", '{"user_id": 7, "country": "France"}'])
    with pytest.raises(BadRowError) as err:
        generic.load("users", users, dsn=dsn)
    assert str(err.value) == f"{users}:3: country 'France' is not a two-letter ISO 3166-1 code"


def test_a_changed_item_is_updated_and_stamped_an_unchanged_one_is_not(dsn, tmp_path):
    path = write(tmp_path / "items.csv", ["item_id,title,tags", "a1,Lamp,home|light",
                                          "a2,Desk,home"])
    generic.load("items", path, dsn=dsn)
    stamps = dict(rows(dsn, "SELECT title, updated_at FROM items"))
    write(path, ["item_id,title,tags", "a1,Lamp,home|light", "a2,Standing desk,home"])
    report = generic.load("items", path, dsn=dsn)
    assert report.written == 1
    after = dict(rows(dsn, "SELECT title, updated_at FROM items"))
    assert after["Lamp"] == stamps["Lamp"] and after["Standing desk"] > stamps["Desk"]
    write(path, ["item_id,title", "a3,Chair", "a3,Chair again"])
    with pytest.raises(BadRowError, match=r"items.csv:3: item_id appears twice in the file"):
        generic.load("items", path, dsn=dsn)


def test_progress_reports_rows_per_second_and_reaches_the_end(dsn, tmp_path):
    lines = [EVENTS[0]] + [f"u{i % 50},i{i % 70},view,{1764585000 + i},,," for i in range(2500)]
    path = write(tmp_path / "e.csv", lines)
    seen = []
    load_events(dsn, path, progress=seen.append, chunk_rows=1000)
    assert [p.rows for p in seen][-1] == 2500 and seen[-1].fraction == 1.0
    assert all(p.rows_per_s > 0 for p in seen)
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)


def test_options_are_checked():
    with pytest.raises(ImportSpecError, match="'userid' is not a column of events"):
        generic.parse_map(["userid=x"], "events")
    with pytest.raises(ImportSpecError, match="expected SCHEMA_COLUMN=FILE_COLUMN"):
        generic.parse_map(["user_id"], "events")


def test_cli_loads_names_the_bad_line_and_keeps_the_movielens_form(settings, tmp_path,
                                                                   capsys):
    path = write(tmp_path / "events.csv", EVENTS)
    assert cli.main(["load", "events", str(path), "--map", "user_id=customer_id"]) == 0
    out = capsys.readouterr()
    assert "events: 4 rows read, 4 written" in out.out and "rows/s" in out.out
    write(path, [EVENTS[0], "a,b,view,nope,,,"])
    assert cli.main(["load", "events", str(path), "--map", "user_id=customer_id"]) == 2
    assert f"recs: {path}:2: timestamp 'nope'" in capsys.readouterr().err
    assert cli.main(["load", "items"]) == 2
    assert "recs load items PATH" in capsys.readouterr().err
    # The original forms are unchanged.
    assert cli.main(["load", "synthetic", "--users", "20", "--items", "10",
                     "--events", "200", "--days", "3"]) == 0
    assert "synthetic: 200 interactions" in capsys.readouterr().out


def test_the_progress_bar_on_a_terminal_and_in_a_log():
    import io

    from cli.load_progress import LoadProgress, bar_line

    p = generic.Progress("events", 1_250_000, 0.5, "f.csv", 3, 6, 4.0)
    assert bar_line(p) == ("events [##########..........]  50%  1,250,000 rows  "
                           "312,500 rows/s  file 3/6")
    now = [0.0]
    out = io.StringIO()
    bar = LoadProgress(out, tty=True, clock=lambda: now[0])
    bar(p)  # before the first quarter second: nothing
    now[0] = 0.3
    bar(p)
    bar.close()
    assert out.getvalue() == "\r" + bar_line(p) + "\n"
    log = io.StringIO()
    bar = LoadProgress(log, tty=False, every_s=10, clock=lambda: now[0])
    for t in (1.0, 11.0, 12.0, 21.5):
        now[0] = t
        bar(p)
    assert log.getvalue().count("\n") == 2  # every 10 s in a log
    short = io.StringIO()
    LoadProgress(short, tty=False, clock=lambda: 0.0)(dataclasses_replace(p, fraction=1.0))
    assert short.getvalue() == ""  # a short load: the closing line says it all


def dataclasses_replace(p, **kw):
    import dataclasses

    return dataclasses.replace(p, **kw)
