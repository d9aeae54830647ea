"""``recs experiments``: define, start, stop and read experiments (work in jobs/experiments.py
and jobs/experiment_analysis.py).

    recs experiments create KEY --variant control=0.5 \
        --variant 'treatment=0.5:{"model_version": "v2"}'
        [--variants JSON] [--layer L] [--salt S] [--range 0:0.5] [--kind ab|interleaving]
        [--owner O] [--metric ctr|conversion] [--start T] [--end T]
    recs experiments start|stop|show|report KEY
    recs experiments list [--status running]
    recs experiments override KEY USER_ID VARIANT | --remove
    recs experiments analyse [--date D] [--key KEY]

A bad definition or a refused change prints one line naming the experiment and the field
and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json


def _err(exc: ValueError):
    from cli.main import CliError

    return CliError(str(exc))


def cmd_create(args, s) -> int:
    from jobs import experiments as job

    try:
        if args.variants and args.variant:
            raise job.ExperimentError(f"experiment {args.key!r}: variants: give --variants "
                                      "or --variant, not both")
        variants = (job.parse_variants_json(args.variants, args.key) if args.variants
                    else [job.parse_variant(v, args.key) for v in args.variant or []])
        exp = job.build(args.key, layer=args.layer, salt=args.salt,
                        layer_range=job.parse_range(args.range, args.key), variants=variants,
                        owner=args.owner, primary_metric=args.metric,
                        start=job.parse_time(args.start, "start", args.key),
                        end=job.parse_time(args.end, "end", args.key))
        stored = job.create(s.dsn, exp, args.kind)
    except job.ExperimentError as exc:
        raise _err(exc) from None
    print(f"created experiment {stored.key} (draft, {stored.kind}, layer "
          f"{stored.experiment.layer} {list(stored.experiment.layer_range)}); "
          f"start it with `recs experiments start {stored.key}`")
    return 0


def _transition(args, s, fn, verb: str) -> int:
    from jobs import experiments as job

    try:
        stored = fn(s.dsn, args.key)
    except job.ExperimentError as exc:
        raise _err(exc) from None
    e = stored.experiment
    when = e.start if verb == "started" else stored.stopped_at
    print(f"{verb} experiment {e.key} at {when.isoformat() if when else '?'} "
          f"(layer {e.layer} {list(e.layer_range)})")
    return 0


def cmd_start(args, s) -> int:
    from jobs import experiments as job

    return _transition(args, s, job.start, "started")


def cmd_stop(args, s) -> int:
    from jobs import experiments as job

    return _transition(args, s, job.stop, "stopped")


def cmd_list(args, s) -> int:
    from jobs import experiments as job

    rows = job.list_all(s.dsn, args.status)
    print(f"{'key':<24} {'kind':<12} {'status':<8} {'layer':<12} {'range':<12} "
          f"{'metric':<10} variants")
    for st in rows:
        e = st.experiment
        rng = f"{e.layer_range[0]:g}-{e.layer_range[1]:g}"
        variants = ", ".join(f"{v.key}={v.weight:g}" for v in e.variants)
        print(f"{e.key:<24} {st.kind:<12} {e.status:<8} {e.layer:<12} {rng:<12} "
              f"{e.primary_metric:<10} {variants}")
    return 0


def cmd_show(args, s) -> int:
    from jobs import experiments as job

    try:
        print(json.dumps(job.show(s.dsn, args.key), indent=2, default=str))
    except job.ExperimentError as exc:
        raise _err(exc) from None
    return 0


def cmd_override(args, s) -> int:
    from cli.main import CliError
    from jobs import experiments as job

    if (args.variant is None) == (not args.remove):
        raise CliError("override: give a VARIANT, or --remove (not both)")
    try:
        out = job.set_override(s.dsn, args.key, args.user_id,
                               None if args.remove else args.variant)
    except job.ExperimentError as exc:
        raise _err(exc) from None
    what = "removed" if args.remove else f"user {args.user_id} -> {args.variant}"
    print(f"{args.key}: override {what}; {len(out)} override(s) now")
    return 0


def cmd_report(args, s) -> int:
    from cli.main import CliError
    from core import db
    from jobs import experiments as job

    day = dt.date.fromisoformat(args.date) if args.date else None
    try:
        with db.transaction(s.dsn) as cur:
            stored = job.get(cur, args.key)
            decision = job.latest_decision(cur, args.key, day)
    except job.ExperimentError as exc:
        raise _err(exc) from None
    if decision is None:
        raise CliError(f"experiment {args.key!r}: no analysis yet (the experiments DAG runs "
                       "daily; `recs experiments analyse` runs it now)")
    e = stored.experiment
    print(f"{e.key} ({stored.kind}, {e.status}, primary metric {e.primary_metric}), "
          f"analysis through {decision['day']}:")
    print(f"{decision['action'].upper()}: {decision['reason']}")
    for variant, d in (decision["details"].get("variants") or {}).items():
        print(f"  {variant}: {d['action']}: {d['reason']}")
    return 0


def cmd_analyse(args, s) -> int:
    from jobs import experiment_analysis as job

    day = (dt.date.fromisoformat(args.date) if args.date
           else (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date())
    keys = [args.key] if args.key else job.experiments_for(s.dsn, day)
    for key in keys:
        out = job.run_one(s.dsn, key, day)
        print(f"{key} through {day}: {out['action']}: {out['reason']} (plot {out['plot']})")
    if not keys:
        print(f"no experiment running or recently stopped on {day}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``recs experiments ...`` to the ``recs`` parser's subcommands."""
    ex = sub.add_parser("experiments", help="A/B and interleaving experiments: define, "
                        "start, stop, report")
    es = ex.add_subparsers(dest="experiments_command", required=True)

    c = es.add_parser("create", help="define a draft experiment")
    c.add_argument("key", help="lower-case letters, digits, '_', '.', '-'")
    c.add_argument("--variant", action="append", metavar="NAME=WEIGHT[:CHANGES_JSON]",
                   help="repeat per variant, control first")
    c.add_argument("--variants", metavar="JSON",
                   help='[{"key": "control", "weight": 0.5, "changes": {}}, ...]')
    c.add_argument("--layer", default="default")
    c.add_argument("--salt", default="", help="seed of the variant hash (default: the key)")
    c.add_argument("--range", default="0:1", metavar="LO:HI",
                   help="the slice [LO, HI) of the layer this experiment owns")
    c.add_argument("--kind", default="ab", help="ab (default) or interleaving")
    c.add_argument("--owner", default="")
    c.add_argument("--metric", default="ctr", help="primary metric: ctr or conversion")
    c.add_argument("--start", help="planned start (ISO; default: when started)")
    c.add_argument("--end", help="planned end (ISO)")
    c.set_defaults(func=cmd_create)

    for name, fn, text in (("start", cmd_start, "draft -> running (checks the layer)"),
                           ("stop", cmd_stop, "running -> stopped"),
                           ("show", cmd_show, "definition, overrides, newest decision")):
        p = es.add_parser(name, help=text)
        p.add_argument("key")
        p.set_defaults(func=fn)

    lst = es.add_parser("list", help="all experiments")
    lst.add_argument("--status", choices=["draft", "running", "stopped"])
    lst.set_defaults(func=cmd_list)

    o = es.add_parser("override", help="QA: force a user into a variant")
    o.add_argument("key")
    o.add_argument("user_id", type=int)
    o.add_argument("variant", nargs="?")
    o.add_argument("--remove", action="store_true")
    o.set_defaults(func=cmd_override)

    r = es.add_parser("report", help="ship, stop or keep running, and why")
    r.add_argument("key")
    r.add_argument("--date", help="the analysis of this day or the newest before it")
    r.set_defaults(func=cmd_report)

    a = es.add_parser("analyse", help="run the daily analysis now (what the experiments "
                      "DAG runs)")
    a.add_argument("--date", help="day to analyse through (default: yesterday, UTC)")
    a.add_argument("--key", help="only this experiment")
    a.set_defaults(func=cmd_analyse)
