"""``recs keys``: create, revoke and list the reader's API keys.

    recs keys create NAME [--scope events|admin|read ...]   # prints the key once
    recs keys revoke ID_OR_NAME
    recs keys list [--all]

``create`` prints the key alone on standard output (so that ``KEY=$(recs keys create
web)`` works) and what was created on standard error. The key is shown only then: the
database keeps a salted hash (serve/apikeys.py), and nothing logs it.
"""

from __future__ import annotations

import argparse
import sys

from serve import apikeys


def cmd_create(args, s) -> int:
    from cli.main import CliError
    from core import db

    try:
        with db.transaction(s.dsn) as cur:
            key_id, key = apikeys.create(cur, args.name, args.scope or ["events"])
    except apikeys.ApiKeyError as exc:
        raise CliError(str(exc)) from None
    scopes = ", ".join(apikeys.check_scopes(args.scope or ["events"]))
    print(f"created API key {key_id} {args.name!r} (scopes: {scopes}); it is shown once, "
          "store it now. Send it as 'X-API-Key: <key>'.", file=sys.stderr)
    print(key)
    return 0


def cmd_revoke(args, s) -> int:
    from cli.main import CliError
    from core import db

    try:
        with db.transaction(s.dsn) as cur:
            ids = apikeys.revoke(cur, args.key)
    except apikeys.ApiKeyError as exc:
        raise CliError(str(exc)) from None
    print(f"revoked API key {', '.join(map(str, ids))} (readers stop accepting it within "
          "5 seconds)")
    return 0


def cmd_list(args, s) -> int:
    from core import db

    with db.transaction(s.dsn) as cur:
        keys = apikeys.list_keys(cur, include_revoked=args.all)
    print(f"{'id':>4}  {'name':<24} {'prefix':<12}  {'scopes':<18} {'created':<20} revoked")
    for k in keys:
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
        print(f"{k.id:>4}  {k.name:<24} {k.prefix:<12}  {','.join(k.scopes):<18} "
              f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``recs keys ...`` to the ``recs`` parser's subcommands."""
    keys = sub.add_parser("keys", help="API keys for posting events, admin endpoints and "
                          "(when configured) reads")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    create = ks.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="who or what uses the key, e.g. web-frontend")
    create.add_argument("--scope", action="append", choices=list(apikeys.SCOPES),
                        help="events (default; includes read), admin (everything) or "
                             "read; repeat for several")
    create.set_defaults(func=cmd_create)
    revoke = ks.add_parser("revoke", help="revoke a key by id, prefix or name")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    revoke.set_defaults(func=cmd_revoke)
    lst = ks.add_parser("list", help="list keys (never the keys themselves)")
    lst.add_argument("--all", action="store_true", help="include revoked keys")
    lst.set_defaults(func=cmd_list)
