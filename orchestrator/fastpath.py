"""``orch claim`` and ``orch release`` through the daemon, without loading click.

A shell loop pays the CLI's start-up for every claim and release; importing click and
building every command costs more than the call itself. When the arguments are in the
plain forms below and the daemon's socket answers, these two commands are parsed and
carried out here, with the same output, errors and exit codes as ``cli``. Anything
else (help, another command, an option or value this does not recognise, no daemon, a
request the daemon provably did not get) returns None, and the full CLI handles it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GLOBAL = {"--db", "--socket"}
CLAIM = {"--worker", "--queue", "--kind", "--ttl", "--item", "--wait"}
RELEASE = {"--token", "--outcome", "--result", "--error", "--retry-in"}
REPEATED = {"--queue", "--kind"}


def parse(args: list[str], command: str) -> tuple[dict[str, Any], list[str]] | None:
    """Options (last wins; repeated ones collected) and positionals, or None."""
    valued = GLOBAL | (CLAIM if command == "claim" else RELEASE)
    flags = {"--json"} | ({"--no-retry"} if command == "release" else set())
    opts: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg in flags:
            opts[arg] = True
        elif name in valued:
            if not eq:
                i += 1
                if i == len(args):
                    return None
                value = args[i]
            if name in REPEATED:
                opts.setdefault(name, []).append(value)
            else:
                opts[name] = value
        elif arg.startswith("-"):
            return None  # help, --token-file, anything else: the full CLI says what
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def run(argv: list[str]) -> int | None:
    """The exit code, or None when the full CLI must handle this command line."""
    try:
        # Global options may come first; the command is the first word that is not one.
        i = 0
        while i < len(argv) and argv[i] in GLOBAL | {"--json"}:
            i += 1 if argv[i] == "--json" else 2
        if i >= len(argv) or argv[i] not in ("claim", "release"):
            return None
        command = argv[i]
        parsed = parse(argv[:i] + argv[i + 1:], command)
        if parsed is None:
            return None
        opts, positional = parsed
        call = _claim(opts, positional) if command == "claim" else _release(opts, positional)
    except ValueError:
        return None  # a value click would refuse: let it say so
    if call is None:
        return None
    return _carry_out(opts, *call)


def _claim(opts: dict[str, Any], positional: list[str]) -> tuple[str, tuple, dict] | None:
    from .validate import CLAIM_KINDS

    if positional or "--worker" not in opts:
        return None
    kinds = opts.get("--kind")
    if kinds and any(k not in CLAIM_KINDS for k in kinds):
        return None
    item = opts.get("--item")
    kw = {"ttl": _float(opts.get("--ttl")), "kinds": kinds or None,
          "item_id": int(item) if item is not None else None,
          "wait": _float(opts.get("--wait"))}
    return "claim_task", (opts["--worker"], opts.get("--queue") or None), kw


def _release(opts: dict[str, Any], positional: list[str]) -> tuple[str, tuple, dict] | None:
    from .validate import OUTCOMES

    if len(positional) != 1 or opts.get("--outcome") not in OUTCOMES:
        return None
    token = opts.get("--token")
    if token is None:
        token = os.environ.get("ORCH_TOKEN", "").strip()
        if not token:
            return None
    kw = {"result": opts.get("--result"), "error": opts.get("--error"),
          "retry_in": _float(opts.get("--retry-in")), "no_retry": opts.get("--no-retry")}
    return "release_task", (int(positional[0]), token, opts["--outcome"]), kw


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _carry_out(opts: dict[str, Any], op: str, args: tuple, kw: dict) -> int | None:
    from . import formatting as fmt
    from .client import connect
    from .errors import EXIT_NOTHING_TO_CLAIM, NotDelivered, OrchError, exit_code
    from .validate import parse_json_text

    db, sock = opts.get("--db"), opts.get("--socket")
    client = connect(Path(db) if db else None, Path(sock) if sock else None)
    if client is None:
        return None  # no daemon: the full CLI opens the file
    try:
        if op == "claim_task":
            got = client.claim_task(*args, **kw)
            if got is None:
                _say("orch: nothing to claim", err=True)
                return EXIT_NOTHING_TO_CLAIM
            _say(fmt.json_text(got))
            return 0
        if kw["result"] is not None:
            kw["result"] = parse_json_text("result", kw["result"])
        item = client.release_task(*args, **kw)
        _say(fmt.json_text(item) if opts.get("--json") else fmt.released_text(dict(item)))
        return 0
    except NotDelivered:
        return None  # provably not carried out: the full CLI tries again, or the file
    except OrchError as exc:
        _say(f"orch: error: {' '.join(str(exc).split())}", err=True)
        return exit_code(exc)
    except BrokenPipeError:
        return 1
    finally:
        client.close()


def _say(text: str, *, err: bool = False) -> None:
    import sys

    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()
