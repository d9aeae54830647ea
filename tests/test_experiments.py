"""``recs experiments``: the round trip and every refusal, against the real Postgres.

create -> show -> start -> list -> stop through the command line; each validation error
exits 2 with one line naming the field; overlapping ranges of one layer are refused at
start, and the per-layer lock makes the check and the change one step (a start waiting for
the lock sees what a concurrent start did).
"""

from __future__ import annotations

import json
import threading
import time

import psycopg2
import pytest

from cli.main import main
from jobs import experiments as job

GOOD = ["--variant", "control=0.5",
        "--variant", 'treatment=0.5:{"model_version": "v-pub", "ranker": false}']


@pytest.fixture
def runs(settings, dsn):
    """Model runs a variant may or may not name."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for version, status in (("v-pub", "published"), ("v-eval", "evaluated"),
                                ("v-rej", "rejected")):
            cur.execute("INSERT INTO model_runs (model_version, status) VALUES (%s, %s)",
                        (version, status))
    return settings


def recs(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["experiments", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def status_of(dsn: str, key: str) -> tuple:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, starts_at IS NOT NULL, stopped_at IS NOT NULL "
                    "FROM experiments WHERE experiment_key = %s", (key,))
        return cur.fetchone()


def test_round_trip(runs, dsn, capsys):
    code, out, err = recs(capsys, "create", "exp1", *GOOD, "--layer", "home", "--range",
                          "0:0.5", "--owner", "ana", "--metric", "conversion",
                          "--end", "2999-01-01")
    assert code == 0, err
    assert "created experiment exp1 (draft, ab, layer home [0.0, 0.5])" in out
    code, out, _ = recs(capsys, "show", "exp1")
    shown = json.loads(out)
    assert shown["status"] == "draft" and shown["range"] == [0.0, 0.5]
    assert shown["variants"] == [
        {"key": "control", "weight": 0.5, "changes": {}},
        {"key": "treatment", "weight": 0.5,
         "changes": {"model_version": "v-pub", "ranker": False}}]
    assert (shown["owner"], shown["primary_metric"], shown["layer"]) == \
        ("ana", "conversion", "home")
    assert shown["ends_at"].startswith("2999-01-01") and shown["starts_at"] is None
    assert shown["latest_decision"] is None

    assert recs(capsys, "start", "exp1")[0] == 0
    assert status_of(dsn, "exp1") == ("running", True, False)
    code, out, _ = recs(capsys, "list", "--status", "running")
    assert "exp1" in out and "control=0.5, treatment=0.5" in out
    assert "exp1" not in recs(capsys, "list", "--status", "draft")[1]

    code, _, err = recs(capsys, "start", "exp1")
    assert code == 2 and "experiment 'exp1': status: is 'running'; start needs 'draft'" in err
    assert recs(capsys, "stop", "exp1")[0] == 0
    assert status_of(dsn, "exp1") == ("stopped", True, True)
    code, _, err = recs(capsys, "start", "exp1")
    assert code == 2 and "status: is 'stopped'" in err
    code, _, err = recs(capsys, "stop", "exp1")
    assert code == 2 and "stop needs 'running'" in err
    code, _, err = recs(capsys, "report", "exp1")
    assert code == 2 and "no analysis yet" in err


def test_variants_as_json(runs, capsys):
    variants = json.dumps([{"key": "a", "weight": 0.25}, {"key": "b", "weight": 0.25},
                           {"key": "c", "weight": 0.5, "changes": {"model_version": "v-eval"}}])
    assert recs(capsys, "create", "exp2", "--variants", variants, "--kind",
                "interleaving")[0] == 0
    shown = json.loads(recs(capsys, "show", "exp2")[1])
    assert [v["key"] for v in shown["variants"]] == ["a", "b", "c"]
    assert shown["kind"] == "interleaving"


@pytest.mark.parametrize("argv, message", [
    (["--variant", "control=0.5", "--variant", "t=0.4"],
     "experiment 'bad': variants.weight: sum to 0.9"),
    (["--variant", "a=0.5", "--variant", "a=0.5"], "variants.key: not unique: ['a']"),
    (["--variant", "a=1"], "variants: needs at least two"),
    (["--variant", "a=1.5", "--variant", "b=-0.5"], "variants.weight: 'a' has 1.5"),
    (["--variant", "a=half", "--variant", "b=0.5"], "variants.weight: 'a' has 'half'"),
    (["--variant", "a", "--variant", "b=0.5"], "variant: 'a' must look like name=weight"),
    (["--variant", "a=0.5", "--variant", "b=0.5:{model"], "variants.changes: 'b': not JSON"),
    (["--variant", "a=0.5", "--variant", "b=0.5:[1]"],
     "variants.changes: 'b': must be a JSON object"),
    ([*GOOD, "--range", "0.6:0.2"], "layer_range: (0.6, 0.2) must be [lo, hi)"),
    ([*GOOD, "--range", "half"], "range: 'half' must look like lo:hi"),
    ([*GOOD, "--kind", "mab"], "kind: 'mab' is not one of ('ab', 'interleaving')"),
    ([*GOOD, "--metric", "revenue"], "primary_metric: 'revenue' is not one of"),
    ([*GOOD, "--layer", ""], "layer: must be a non-empty string"),
    ([*GOOD, "--start", "2025-02-01", "--end", "2025-01-01"], "end: must be after start"),
    ([*GOOD, "--start", "soon"], "start: 'soon' is not an ISO date"),
    (["--variant", "a=0.5", "--variant", 'b=0.5:{"model_version": "v-none"}'],
     "variants.changes.model_version: 'b' names 'v-none', which is not in model_runs"),
    (["--variant", "a=0.5", "--variant", 'b=0.5:{"model_version": "v-rej"}'],
     "variants.changes.model_version: 'b' names 'v-rej', which is 'rejected'"),
    (["--variant", "a=0.5", "--variant", 'b=0.5:{"model_version": 7}'],
     "variants.changes.model_version: 'b' has 7"),
    (["--variants", '{"a": 1}'], "variants: must be a JSON array"),
    (["--variants", '[{"key": "a", "weight": 1, "colour": "red"}, {"key": "b", "weight": 0}]'],
     "variants[0]: unknown fields ['colour']"),
    ([*GOOD, "--variants", "[]"], "give --variants or --variant, not both"),
])
def test_each_validation_error_names_the_field(runs, dsn, capsys, argv, message):
    code, out, err = recs(capsys, "create", "bad", *argv)
    assert code == 2 and out == ""
    assert err.startswith("recs: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM experiments")
        assert cur.fetchone()[0] == 0


def test_key_checks(runs, capsys):
    code, _, err = recs(capsys, "create", "Bad Key", *GOOD)
    assert code == 2 and "experiment 'Bad Key': key: refused by the table's check" in err
    assert recs(capsys, "create", "dup", *GOOD)[0] == 0
    code, _, err = recs(capsys, "create", "dup", *GOOD)
    assert code == 2 and "experiment 'dup': key: already exists" in err
    code, _, err = recs(capsys, "start", "nope")
    assert code == 2 and "experiment 'nope': key: no such experiment" in err


def test_a_model_version_gone_bad_after_create_blocks_start(runs, dsn, capsys):
    assert recs(capsys, "create", "e", *GOOD)[0] == 0
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE model_runs SET status = 'retired' WHERE model_version = 'v-pub'")
    code, _, err = recs(capsys, "start", "e")
    assert code == 2 and "names 'v-pub', which is 'retired'" in err
    assert status_of(dsn, "e")[0] == "draft"


def test_overlapping_ranges_of_one_layer_are_refused_at_start(runs, dsn, capsys):
    for key, layer, rng in (("a", "home", "0:0.6"), ("b", "home", "0.5:1"),
                            ("c", "home", "0.6:1"), ("d", "other", "0:1")):
        assert recs(capsys, "create", key, *GOOD, "--layer", layer, "--range", rng)[0] == 0
    assert recs(capsys, "start", "a")[0] == 0
    code, _, err = recs(capsys, "start", "b")
    assert code == 2
    assert "experiment 'b': layer_range: (0.5, 1.0) overlaps running 'a' (0.0, 0.6) in " \
           "layer 'home'" in err and "at most one running experiment per layer" in err
    assert status_of(dsn, "b")[0] == "draft"
    assert recs(capsys, "start", "c")[0] == 0   # adjacent: [0, 0.6) and [0.6, 1)
    assert recs(capsys, "start", "d")[0] == 0   # another layer
    # Once a stops, b's range is free (c's [0.6, 1) still overlaps b's [0.5, 1)).
    assert recs(capsys, "stop", "a")[0] == 0
    assert "overlaps running 'c'" in recs(capsys, "start", "b")[2]
    assert recs(capsys, "stop", "c")[0] == 0
    assert recs(capsys, "start", "b")[0] == 0


def test_a_start_waits_for_the_layer_lock_and_then_sees_the_other_start(runs, dsn):
    """Hold the layer's lock; a start blocks on it; meanwhile an overlapping experiment
    starts; when the lock is released the waiting start must see it and refuse."""
    for key, rng in (("first", (0.0, 0.5)), ("second", (0.4, 1.0))):
        job.create(dsn, job.build(key, layer="home", layer_range=rng,
                                  variants=[job.parse_variant("a=0.5"),
                                            job.parse_variant("b=0.5")]))
    holder = psycopg2.connect(dsn)
    holder.autocommit = True
    result: dict = {}
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtext('experiments:layer:home'))")

        def start_second():
            try:
                result["stored"] = job.start(dsn, "second")
            except job.ExperimentError as exc:
                result["error"] = str(exc)

        t = threading.Thread(target=start_second)
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not result, "start did not wait for the layer's lock"
        cur.execute("UPDATE experiments SET status = 'running', starts_at = now() "
                    "WHERE experiment_key = 'first'")
        cur.execute("SELECT pg_advisory_unlock(hashtext('experiments:layer:home'))")
        t.join(30)
    holder.close()
    assert "overlaps running 'first'" in result.get("error", ""), result
    assert status_of(dsn, "second")[0] == "draft"


def test_overrides(runs, capsys):
    assert recs(capsys, "create", "e", *GOOD)[0] == 0
    code, out, _ = recs(capsys, "override", "e", "42", "treatment")
    assert code == 0 and "user 42 -> treatment; 1 override(s) now" in out
    assert recs(capsys, "override", "e", "42", "control")[0] == 0  # replaces
    assert json.loads(recs(capsys, "show", "e")[1])["overrides"] == {"42": "control"}
    code, _, err = recs(capsys, "override", "e", "43", "nope")
    assert code == 2 and "experiment 'e': variant: 'nope' is not one of ['control'" in err
    assert recs(capsys, "override", "e", "42", "--remove")[0] == 0
    code, _, err = recs(capsys, "override", "e", "42", "--remove")
    assert code == 2 and "override: user 42 has none" in err
    code, _, err = recs(capsys, "override", "e", "42")
    assert code == 2 and "give a VARIANT, or --remove" in err
