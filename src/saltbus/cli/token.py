"""``saltbus token``: the bearer tokens of ``saltbus http``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

HELP = "create, list and revoke the tokens of `saltbus http`"
DESCRIPTION = """\
Tokens of the HTTP bridge (`saltbus http --tokens FILE`). The file keeps each
token's name, the SHA-256 of its secret (never the secret), and the tag
patterns it may read and fire; it is written with mode 0600. A running bridge
sees changes at once: a revoked token is refused from its next request, and its
open streams end within a heartbeat.

Patterns are shell-style (fnmatch, case-sensitive, `*` also matches `/`):
app/* matches app/deploy and app/deploy/done.

examples:
  saltbus token create dashboard --read 'salt/job/*' --read 'app/*' --tokens tokens.json
  saltbus token create ci --read 'ci/*' --fire 'ci/*' --tokens tokens.json
  saltbus token list --tokens tokens.json
  saltbus token revoke ci --tokens tokens.json
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "token",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="add a token and print its secret (shown this once only)",
        description="Add a token and print its secret on stdout; it cannot be shown again.",
    )
    create.add_argument("name", metavar="NAME", help="a name for the token (letters, digits, ._@-)")
    create.add_argument(
        "--read",
        action="append",
        metavar="PATTERN",
        help="tags it may read (repeatable; default: '*', every tag)",
    )
    create.add_argument(
        "--fire",
        action="append",
        metavar="PATTERN",
        default=[],
        help="tags it may fire, by POST /events, the WebSocket or a hook "
        "(repeatable; default: none)",
    )
    _tokens_option(create)
    create.set_defaults(run=run_create)

    listing = actions.add_parser("list", help="list the tokens (names and patterns, no secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per token")
    _tokens_option(listing)
    listing.set_defaults(run=run_list)

    revoke = actions.add_parser("revoke", help="remove a token")
    revoke.add_argument("name", metavar="NAME")
    _tokens_option(revoke)
    revoke.set_defaults(run=run_revoke)


def _tokens_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens",
        type=Path,
        required=True,
        metavar="FILE",
        help="the token file (created by the first `create`)",
    )


def run_create(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from saltbus.http.tokens import TokenStore  # noqa: PLC0415

    read = args.read if args.read is not None else ["*"]
    secret = TokenStore(args.tokens).create(args.name, read, args.fire)
    print(secret, file=out, flush=True)
    print(
        f"saltbus: token {args.name!r} added to {args.tokens}; its secret is shown only now.\n"
        f"  read: {', '.join(read) or '(nothing)'}; fire: {', '.join(args.fire) or '(nothing)'}\n"
        "  use it as `Authorization: Bearer <secret>`, as ?token=<secret>, or open the live "
        "page at http://HOST:PORT/#token=<secret>",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.http.tokens import TokenStore  # noqa: PLC0415

    out = out or sys.stdout
    records = TokenStore.open(args.tokens).records()
    if args.json:
        for record in records:
            item = record.to_json()
            del item["sha256"]
            print(json.dumps(item), file=out)
        return 0
    if not records:
        print(f"no tokens in {args.tokens}", file=sys.stderr)
        return 0
    rows = [("NAME", "READ", "FIRE", "CREATED")]
    rows += [(r.name, " ".join(r.read) or "-", " ".join(r.fire) or "-", r.created) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        print("  ".join([*cells, row[3]]), file=out)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from saltbus.http.tokens import TokenStore  # noqa: PLC0415

    TokenStore.open(args.tokens).revoke(args.name)
    print(f"saltbus: token {args.name!r} revoked", file=sys.stderr)
    return 0
