"""The ``orch`` command line: a thin edge over the operations.

Each command parses its flags, calls one operation on a backend (the daemon when its
socket answers, else the database opened here) and prints the result: aligned text for
people, one JSON document with ``--json``. Errors become one ``orch: error: …`` line
and the exit code that ``errors.CODES`` gives.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__, defaults, paths
from . import formatting as fmt
from .errors import (
    EXIT_NOTHING_TO_CLAIM,
    RPC_LIMIT_EXCEEDED,
    Corrupt,
    LeaseLost,
    NotDelivered,
    OrchError,
    Unavailable,
    exit_code,
)
from .interface import Operations
from .validate import (
    CLAIM_KINDS,
    EFFECTS,
    KINDS,
    OUTCOMES,
    RESOLUTIONS,
    STATUSES,
    SUBMIT_KINDS,
    parse_json_text,
)

# --- options every command accepts, before or after its name ---------------------------


class Settings:
    def __init__(self) -> None:
        self.db: paths.Database | None = None
        self.socket: Path | None = None
        self.json = False
        self._backend: _DaemonOrFile | None = None

    def backend(self, *, create: bool = True):
        """The daemon's client if its socket answers, else the database opened here.

        Commands that only read pass ``create=False``: a mistyped --db then says the
        file does not exist instead of making an empty one.
        """
        if self._backend is None:
            from .client import connect

            client = connect(self.db, self.socket)
            # Falling back, open the file that daemon was serving.
            db = client.db if client is not None else self.db

            def open_file() -> Operations:
                from .api import Orchestrator  # the engine: only when the file is used

                return Orchestrator(db, busy_budget_s=_busy_budget(), create=create)
            self._backend = _DaemonOrFile(client, open_file)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


class _DaemonOrFile(Operations):
    """The daemon while it takes requests, else the database file opened here.

    A request that provably did not reach the daemon (it is stopping or restarting,
    or its socket refuses) goes to the file, as when no daemon answered at all; one
    the daemon may have read is never sent twice (``OutcomeUnknown``, exit 7).
    """

    def __init__(self, client: Operations | None, open_file: Callable[[], Operations]):
        self.client, self.open_file = client, open_file
        self.file: Operations | None = None

    def _call(self, op: str, params: dict[str, Any]) -> Any:
        if self.client is not None:
            try:
                return self.client._call(op, params)
            except NotDelivered:
                self.client.close()
                self.client = None
        if self.file is None:
            self.file = self.open_file()
        return self.file._call(op, params)

    def clone(self) -> _DaemonOrFile:
        # Another thread's handle (orch work's slots): its own socket, its own file.
        return _DaemonOrFile(self.client.clone() if self.client is not None else None,
                             self.open_file)

    def close(self) -> None:
        for backend in (self.client, self.file):
            if backend is not None:
                backend.close()


def _busy_budget() -> float:
    raw = os.environ.get("ORCH_BUSY_TIMEOUT")
    try:
        return float(raw) if raw else defaults.BUSY_BUDGET_S
    except ValueError:
        raise click.UsageError(f"ORCH_BUSY_TIMEOUT: not a number of seconds: {raw!r}") from None


def _set(attr: str, convert: Callable[[Any], Any] = lambda v: v):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            setattr(ctx.ensure_object(Settings), attr, convert(value))
    return callback


def common(fn: Callable) -> Callable:
    """--db, --socket and --json, accepted on the group and on every command."""
    fn = click.option("--json", "as_json", is_flag=True, expose_value=False,
                      callback=_set("json"), help="One JSON document on stdout.")(fn)
    fn = click.option("--socket", type=click.Path(dir_okay=False), expose_value=False,
                      callback=_set("socket", Path),
                      help="Daemon socket [env ORCH_SOCKET].")(fn)
    fn = click.option("--db", type=str, expose_value=False, callback=_set("db", paths.db_arg),
                      help="Database file, or a postgresql:// URL [env ORCH_DB].")(fn)
    return fn


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def command(group: click.Group, name: str | None = None, **kw: Any):
    """A subcommand with the common options, whose return value is the exit code."""
    def wrap(fn: Callable) -> click.Command:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> int:
            return fn(*args, **kwargs) or 0
        return group.command(name, **kw)(common(run))
    return wrap


# --- output -----------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    click.echo(fmt.json_text(value))


def out(value: Any, text: Callable[[Any], str] | str) -> None:
    if settings().json:
        emit_json(value)
    else:
        click.echo(text(value) if callable(text) else text)


def json_arg(field: str, text: str | None) -> Any:
    return None if text is None else parse_json_text(field, text)


#: --ttl of the commands that claim.
TTL_HELP = f"Lease length in seconds (default {defaults.TTL_S:g})."


# --- tokens: on the command line, in a file, or in ORCH_TOKEN -----------------------------
# A command line is readable by every user of the machine (ps, /proc/PID/cmdline); a
# file of mode 0600 and the environment (/proc/PID/environ is the owner's) are not.

TOKEN_SOURCES = "--token T, --token-file FILE|- or the environment variable ORCH_TOKEN"


def token_options(what: str) -> Callable:
    """--token and --token-file; ``the_token`` picks the one given, else ORCH_TOKEN."""
    def wrap(fn: Callable) -> Callable:
        fn = click.option("--token-file", type=click.File("r"), default=None, metavar="FILE",
                          help="Read the token from the first line of FILE (- for stdin).")(fn)
        return click.option("--token", default=None,
                            help=f"{what}. Shown by ps to every user: prefer "
                                 "--token-file or the variable ORCH_TOKEN.")(fn)
    return wrap


def the_token(token: str | None, token_file: Any) -> str:
    """--token, else --token-file's first line, else ORCH_TOKEN; giving both is an error."""
    if token is not None and token_file is not None:
        raise click.UsageError("give --token or --token-file, not both")
    if token is not None:
        return token
    if token_file is not None:
        return first_line(token_file, f"--token-file {token_file.name}")
    env = os.environ.get("ORCH_TOKEN", "").strip()
    if env:
        return env
    raise click.UsageError(f"no token: give {TOKEN_SOURCES}")


def first_line(f: Any, where: str) -> str:
    line = f.readline().strip()
    if not line:
        raise click.UsageError(f"{where}: no token on its first line")
    return line


# --- the commands -------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orch")
@common
def cli() -> None:
    """orch: leases on work for local AI agents, kept in one SQLite file.

    \b
    Example (ID and TOKEN: the "id" and "token" fields of the claim's JSON):
      orch submit --payload '{"url": "https://example.org"}'
      orch claim --worker w1 --ttl 60
      orch release ID --token TOKEN --outcome succeeded
    """


@command(cli)
def init() -> int:
    """Create (or migrate) the database and show where it is.

    \b
    Example:
      orch init --db /tmp/orch.db
    """
    from .api import Orchestrator

    s = settings()
    with Orchestrator(s.db, busy_budget_s=_busy_budget(), init=True) as orch:
        st = orch.status()
        info = {"db": paths.shown(orch.db_path), "schema_version": st["schema_version"]}
    out(info, fmt.init_text)
    return 0


@command(cli)
@click.option("--queue", default=None, help=f"Queue name (default: {defaults.QUEUE}).")
@click.option("--payload", default=None, help="The work's input, as JSON.")
@click.option("--payload-file", type=click.File("r"), default=None,
              help="Read the payload JSON from a file, or - for stdin.")
@click.option("--priority", type=int, default=None, help="Higher is claimed first.")
@click.option("--key", default=None, help="Idempotency key: unique per kind and queue.")
@click.option("--max-attempts", type=int, default=None, help="Claims allowed (0: no limit).")
@click.option("--delay", type=float, default=None, help="Seconds before it can be claimed.")
@click.option("--kind", type=click.Choice(SUBMIT_KINDS), default=None,
              help="Default task. Goals and tool executions are made under their parent's "
                   "lease, with orch goal add and orch tool exec.")
@click.option("--parent", "parent_id", type=int, default=None, help="Parent item id.")
@click.option("--effect", type=click.Choice(EFFECTS), default=None,
              help="idempotent: retried after a lost lease; unsafe: never blindly.")
def submit(queue, payload, payload_file, priority, key, max_attempts, delay, kind,
           parent_id, effect) -> int:
    """Add a work item.

    \b
    Example:
      orch submit --queue crawl --payload '{"url": "https://example.org"}' --key page-1
    """
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    text = payload_file.read() if payload_file is not None else payload
    item = settings().backend().submit_task(
        json_arg("payload", text), queue=queue, priority=priority, key=key,
        max_attempts=max_attempts, delay=delay, kind=kind, parent_id=parent_id, effect=effect)
    out(item, fmt.submitted_text)
    return 0


@command(cli)
@click.option("--worker", "worker_id", required=True, help="Who is claiming.")
@click.option("--queue", "queues", multiple=True,
              help=f"Queue(s) to take from (default: {defaults.QUEUE}).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(CLAIM_KINDS),
              help=f"Kind(s) to take (default: {defaults.KIND}).")
@click.option("--ttl", type=float, default=None, help=TTL_HELP)
@click.option("--item", "item_id", type=int, default=None,
              help="Claim this item (or take over its expired lease).")
@click.option("--wait", type=float, default=None, help="Seconds to wait for an item.")
def claim(worker_id, queues, kinds, ttl, item_id, wait) -> int:
    """Claim the best claimable item; prints the claim as JSON (exit 3: nothing to claim).

    \b
    Example:
      orch claim --worker w1 --queue crawl --ttl 60 --wait 30
    """
    got = settings().backend().claim_task(worker_id, list(queues) or None, ttl=ttl,
                                          kinds=list(kinds) or None, item_id=item_id, wait=wait)
    if got is None:
        click.echo("orch: nothing to claim", err=True)
        return EXIT_NOTHING_TO_CLAIM
    emit_json(got)
    return 0


@command(cli)
@click.argument("item_id", type=int, required=False)
@token_options("The claim's token")
@click.option("--lease", "lease_args", multiple=True, metavar="ID=TOKEN",
              help="A lease to extend; repeat it to extend several in one call (for "
                   "scripts holding many leases). The token is shown by ps: ID=@FILE "
                   "reads it from FILE's first line instead.")
@click.option("--ttl", type=float, default=None,
              help="Each lease ends this many seconds from now (default: its claim's ttl).")
@click.option("--worker", "worker_id", default=None, hidden=True,
              help="No longer accepted: a heartbeat names each lease with its token.")
def heartbeat(item_id, token, token_file, lease_args, ttl, worker_id) -> int:
    """Extend a lease (ID with its token), or several (--lease ID=TOKEN ...).

    With several leases each is extended or refused on its own; exit 4 if any was
    refused (the others are extended all the same).

    \b
    Example:
      ORCH_TOKEN="$token" orch heartbeat 42 --ttl 60
      orch heartbeat --lease 42=@tok42 --lease 43=@tok43
    """
    if worker_id is not None:
        raise click.UsageError(
            "--worker: no longer accepted: a heartbeat by worker name would keep a dead "
            "process's leases alive for a new one reusing its name; give ID with its "
            "token, or --lease ID=TOKEN for each lease")
    if lease_args:
        if item_id is not None or token is not None or token_file is not None:
            raise click.UsageError("give ID with its token, or --lease ID=TOKEN, not both")
        return heartbeat_many([lease_arg(i, a) for i, a in enumerate(lease_args)], ttl)
    if item_id is None:
        raise click.UsageError(f"give ID with its token ({TOKEN_SOURCES}), "
                               "or --lease ID=TOKEN")
    r = settings().backend().heartbeat(item_id, the_token(token, token_file), ttl=ttl)
    out(r, fmt.lease_line)
    return 0


def lease_arg(i: int, arg: str) -> dict:
    """``ID=TOKEN`` or ``ID=@FILE``; errors never repeat the argument (it holds a token)."""
    iid, sep, tok = arg.partition("=")
    try:
        item_id = int(iid)
    except ValueError:
        item_id = None
    if not sep or item_id is None or not tok:
        raise click.UsageError(f"--lease #{i + 1}: expected ID=TOKEN or ID=@FILE")
    if tok.startswith("@"):  # orch's tokens are URL-safe base64: none starts with @
        try:
            with click.open_file(tok[1:], "r") as f:
                tok = first_line(f, f"--lease {item_id}=@{tok[1:]}")
        except OSError as exc:
            raise click.UsageError(f"--lease {item_id}=@{tok[1:]}: {exc.strerror}") from None
    return {"item_id": item_id, "token": tok}


def heartbeat_many(leases: list[dict], ttl: float | None) -> int:
    r = settings().backend().heartbeat(leases=leases, ttl=ttl)
    out(r, fmt.leases_text)
    refused = [x["id"] for x in r["leases"] if "error" in x]
    if not refused:
        return 0
    return fail(f"{len(refused)} of {len(leases)} lease(s) refused: "
                f"item{'s' if len(refused) > 1 else ''} {', '.join(map(str, refused))}",
                exit_code(LeaseLost()))


@command(cli)
@click.argument("item_id", type=int)
@token_options("The claim's token")
@click.option("--outcome", required=True, type=click.Choice(OUTCOMES),
              help="succeeded; failed (retried after a backoff while attempts are left, "
                   "else dead); cancelled; requeue (pending again now, the claim counted).")
@click.option("--result", default=None, help="What the work produced, as JSON.")
@click.option("--error", default=None, help="What went wrong.")
@click.option("--retry-in", type=float, default=None, help="Seconds before a retry.")
@click.option("--no-retry", is_flag=True, default=False, help="A failure is final.")
def release(item_id, token, token_file, outcome, result, error, retry_in, no_retry) -> int:
    """End a claim with an outcome.

    \b
    Example:
      ORCH_TOKEN="$token" orch release 42 --outcome succeeded --result '{"pages": 3}'
    """
    item = settings().backend().release_task(
        item_id, the_token(token, token_file), outcome, result=json_arg("result", result),
        error=error, retry_in=retry_in, no_retry=no_retry or None)
    out(item, fmt.released_text)
    return 0


@command(cli)
@click.option("--dry-run", is_flag=True, default=False, help="Say what would happen only.")
def recover(dry_run) -> int:
    """Recover expired leases (run it from cron; safe beside the daemon).

    \b
    Example (a crontab line: cron's PATH lacks ~/.local/bin, so orch is named by
    its full path, as scripts/install-service.sh installs it):
      * * * * * "$HOME/.local/bin/orch" recover >/dev/null 2>>"$HOME/.openclaw/logs/recover.log"
    """
    r = settings().backend().stale_recovery(dry_run=dry_run or None)
    out(r, fmt.recovered_text)
    return 0


#: --by of the actions a person takes (cancel, resolve, retry).
by_option = click.option("--by", default=None, metavar="NAME",
                         help="Who is acting, recorded in the event (like a worker id).")


@command(cli)
@click.argument("item_id", type=int)
@by_option
def cancel(item_id, by) -> int:
    """Cancel a pending item, or ask a running item's holder to stop.

    \b
    Example:
      orch cancel 42
    """
    item = settings().backend().cancel_task(item_id, by=by)
    out(item, fmt.cancelled_text)
    return 0


@command(cli, "checkpoint")
@click.argument("item_id", type=int)
@token_options("The claim's token")
@click.option("--data", required=True, help="Progress, as JSON.")
def checkpoint_cmd(item_id, token, token_file, data) -> int:
    """Store progress for the next holder.

    \b
    Example:
      orch checkpoint 42 --token-file ~/.run/42.token --data '{"page": 7}'
    """
    r = settings().backend().checkpoint(item_id, the_token(token, token_file),
                                        json_arg("data", data))
    out(r, fmt.checkpointed_text)
    return 0


@command(cli)
@click.argument("item_id", type=int)
@click.option("--outcome", required=True, type=click.Choice(RESOLUTIONS),
              help="What happened, as you found out: succeeded, failed or cancelled "
                   "settle it; retry makes it pending again.")
@by_option
def resolve(item_id, outcome, by) -> int:
    """Settle an item whose status is unknown.

    \b
    Example:
      orch resolve 42 --outcome retry
    """
    item = settings().backend().resolve_task(item_id, outcome, by=by)
    out(item, fmt.status_line)
    return 0


@command(cli)
@click.argument("item_id", type=int)
@by_option
def retry(item_id, by) -> int:
    """Make a dead, failed or cancelled item pending again, claimable now, with as many
    more attempts as it was submitted with.

    \b
    Example:
      orch retry 42
    """
    item = settings().backend().retry_task(item_id, by=by)
    out(item, fmt.retried_text)
    return 0


@command(cli)
@click.argument("item_id", type=int)
@token_options("The token to check")
def verify(item_id, token, token_file) -> int:
    """Is this token the item's live claim? (exit 4 when not)

    \b
    Example:
      orch verify 42 --token "$token" && do-the-side-effect
    """
    r = settings().backend(create=False).verify(item_id, the_token(token, token_file))
    out(r, lambda r: fmt.verified_text(r, item_id))
    return 0 if r["valid"] else exit_code(LeaseLost())


@command(cli)
def status() -> int:
    """Counts by status, live workers and what they hold, expired leases.

    \b
    Example:
      orch status
    """
    out(settings().backend(create=False).status(), fmt.status_text)
    return 0


@command(cli, "ls")
@click.option("--status", "status_", type=click.Choice(STATUSES), default=None,
              help="Only items with this status.")
@click.option("--queue", default=None, help="Only items in this queue.")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Only items of this kind.")
@click.option("--limit", type=int, default=None,
              help=f"Default {defaults.LIST_LIMIT}; 0 for all.")
def ls(status_, queue, kind, limit) -> int:
    """List items, newest first.

    \b
    Example:
      orch ls --status running
    """
    out(settings().backend(create=False).list_tasks(status_, queue, kind, limit),
        fmt.items_table)
    return 0


@command(cli)
@click.argument("item_id", type=int)
def show(item_id) -> int:
    """Show one item (never its token).

    \b
    Example:
      orch show 42 --json
    """
    out(settings().backend(create=False).get_task(item_id), fmt.item_text)
    return 0


@command(cli)
@click.option("--item", "item_id", type=int, default=None, help="Only this item's events.")
@click.option("--since", type=int, default=None, help="Events after this sequence number.")
@click.option("--follow", is_flag=True, default=False, help="Keep printing new events.")
def events(item_id, since, follow) -> int:
    """Print the event log, oldest first.

    \b
    Example:
      orch events --follow --json
    """
    backend = settings().backend(create=False)
    as_json = settings().json
    since = since or 0
    while True:
        try:
            batch = backend.list_events(item_id, since)
        except Unavailable as exc:
            if not follow:
                raise
            # A read is safe to repeat: following outlives a server restart or a
            # dropped link, and says so once per failure.
            click.echo(f"orch: warning: {exc}; trying again", err=True)
            time.sleep(1.0)
            continue
        if not follow and as_json:
            emit_json(batch)
            return 0
        for e in batch:
            click.echo(json.dumps(e, ensure_ascii=False) if as_json else fmt.event_line(e))
        since = batch[-1]["seq"] if batch else since
        if not follow:
            return 0
        if len(batch) < defaults.EVENTS_LIMIT:  # a full page: more may be waiting
            time.sleep(0.5)


def _existing_db():
    """The database opened here, refusing to create one where none is (doctor, backup)."""
    from .api import Orchestrator

    return Orchestrator(settings().db, busy_budget_s=_busy_budget(), create=False)


@command(cli)
def doctor() -> int:
    """Check integrity, the event hash chain, that the rows equal the log's replay, and
    that every lease in the log kept the lease rules.

    \b
    Example:
      orch doctor || echo "the file needs attention"
    """
    from .doctor import damaged

    try:
        orch = _existing_db()
    except Corrupt as exc:
        raise damaged(exc, settings().db or paths.default_db()) from exc
    with orch:
        report = orch.doctor()
    out(report, fmt.doctor_text)
    return 0 if report["ok"] else 1


@command(cli)
@click.argument("dest", type=click.Path(dir_okay=False))
def backup(dest) -> int:
    """Copy the database consistently while writers keep going.

    \b
    Example:
      orch backup ~/backups/orch-$(date +%F).db
    """
    if Path(dest).exists():
        raise click.UsageError(f"{dest} exists; choose a new file")
    with _existing_db() as orch:
        orch.backup(dest)
    out({"backup": str(dest)}, f"backup written: {dest}")
    return 0


@command(cli, "copy")
@click.option("--to", "target", required=True, metavar="URL",
              help="The PostgreSQL database to fill, as a postgresql:// URL; its schema "
                   "must be empty, or orch's without items or events.")
def copy_(target) -> int:
    """Copy the SQLite database (--db) into an empty PostgreSQL database, then check the
    copy with doctor there; exit 1 if the check or the counts disagree.

    Items, workers and events keep their ids, fences, numbers and hashes. The file is
    read in one transaction, so a daemon serving it may keep running: the copy is the
    file as of that moment. A database holding any item or event is refused (exit 6).

    \b
    Example:
      orch copy --to postgresql://orch@db-host/orch
    """
    from .pgcopy import copy
    from .store import is_url

    source = settings().db or paths.default_db()
    if is_url(source):
        raise click.UsageError(f"orch copy reads a SQLite file, but --db (or ORCH_DB) is "
                               f"{paths.shown(source)}; give the file with --db PATH")
    if not is_url(target):
        raise click.UsageError("--to: expected a postgresql:// URL")
    report = copy(Path(source), target, busy_budget_s=_busy_budget())
    out(report, fmt.copy_text)
    return 0 if report["ok"] else 1


# --- agent records ------------------------------------------------------------------------


@cli.group()
def session() -> None:
    """An agent's run, as a lease-protected work item."""


@command(session, "start")
@click.option("--worker", "worker_id", required=True, help="The agent holding the session.")
@click.option("--key", default=None, help="Idempotency key: an existing session is resumed.")
@click.option("--payload", default=None, help="The session's input, as JSON.")
@click.option("--ttl", type=float, default=None, help=TTL_HELP)
def session_start(worker_id, key, payload, ttl) -> int:
    """Create a session and claim it; prints the claim as JSON.

    \b
    Example:
      orch session start --worker agent-1 --key run-2026-11-23 --ttl 60
    """
    emit_json(settings().backend().start_session(worker_id, key=key,
                                                  payload=json_arg("payload", payload), ttl=ttl))
    return 0


@command(session, "resume")
@click.argument("session_id", type=int)
@click.option("--worker", "worker_id", required=True, help="The agent taking the session.")
@click.option("--ttl", type=float, default=None, help=TTL_HELP)
def session_resume(session_id, worker_id, ttl) -> int:
    """Claim a session again after its holder died; prints the claim with its checkpoint.

    \b
    Example:
      orch session resume 12 --worker agent-1
    """
    emit_json(settings().backend().resume_session(session_id, worker_id, ttl=ttl))
    return 0


@cli.group()
def goal() -> None:
    """A piece of a session's work."""


@command(goal, "add")
@click.option("--session", "session_id", type=int, required=True, help="The session's id.")
@token_options("The session's token")
@click.option("--payload", default=None, help="The goal, as JSON.")
@click.option("--key", default=None, help="Idempotency key within the session.")
@click.option("--ttl", type=float, default=None, help="Lease length (default: the session's).")
def goal_add(session_id, token, token_file, payload, key, ttl) -> int:
    """Create a goal under a session and claim it for the session's holder.

    \b
    Example:
      orch goal add --session 12 --token "$session_token" --key fetch-docs
    """
    emit_json(settings().backend().create_goal(session_id, the_token(token, token_file),
                                               payload=json_arg("payload", payload),
                                               key=key, ttl=ttl))
    return 0


@cli.group()
def tool() -> None:
    """Tool executions: one per key, never run twice by accident."""


@command(tool, "exec")
@click.option("--goal", "goal_id", type=int, required=True, help="The goal's id.")
@token_options("The goal's token")
@click.option("--tool", "tool_name", required=True, help="The tool's name.")
@click.option("--input", "input_", default=None, help="The tool's input, as JSON.")
@click.option("--key", default=None,
              help="Idempotency key (default: the tool and a hash of the input).")
@click.option("--effect", type=click.Choice(EFFECTS), default=None,
              help="Default unsafe: a lost lease makes it unknown, never rerun.")
@click.option("--ttl", type=float, default=None,
              help="Lease length in seconds (default: the goal's).")
@click.option("--wait", type=float, default=None,
              help="If another holder runs it, wait this many seconds for its outcome.")
def tool_exec(goal_id, token, token_file, tool_name, input_, key, effect, ttl, wait) -> int:
    """Get the one execution of a tool call: claimed for you (with a token) if it is
    yours to run, else as it stands with its status and result.

    \b
    Example:
      orch tool exec --goal 13 --token "$goal_token" --tool send_email --input '{"to": "a@b"}'
    """
    emit_json(settings().backend().execute_tool_idempotent(
        goal_id, the_token(token, token_file), tool_name, json_arg("input", input_), key=key,
        effect=effect, ttl=ttl, wait=wait))
    return 0


@command(cli, "work", context_settings={"allow_interspersed_args": False})
@click.option("--queue", "queues", multiple=True,
              help=f"Queue(s) to take from (default: {defaults.QUEUE}).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=defaults.WORK_CONCURRENCY,
              show_default=True, help="Commands run at once, each on an item of its own.")
@click.option("--ttl", type=float, default=defaults.TTL_S, show_default=True,
              help="Lease length in seconds; the lease is renewed every third of it.")
@click.option("--max-items", type=click.IntRange(min=1), default=None,
              help="Stop after this many items (default: run until stopped).")
@click.option("--worker", "worker_id", default=None, help="Worker name (default: work-PID@HOST).")
@click.option("--grace", type=click.FloatRange(min=0), default=defaults.WORK_GRACE_S,
              show_default=True,
              help="On SIGTERM or SIGINT: seconds running commands get to finish before "
              "they are stopped and their items requeued.")
@click.option("--kill-after", type=click.FloatRange(min=0, min_open=True),
              default=defaults.WORK_KILL_AFTER_S,
              show_default=True, help="Seconds between SIGTERM and SIGKILL to a stopped command.")
@click.option("--retry-in", type=float, default=defaults.WORK_RETRY_IN_S, show_default=True,
              help="Seconds before an item whose command exited 75 can be claimed again.")
@click.argument("command_", metavar="-- COMMAND [ARGS]...", nargs=-1, required=True,
                type=click.UNPROCESSED)
def work(queues, concurrency, ttl, max_items, worker_id, grace, kill_after, retry_in,
         command_) -> int:
    """Run COMMAND once per claimed item, as long as it runs (stop with SIGTERM or Ctrl-C).

    COMMAND gets the payload JSON on stdin and ORCH_ITEM_ID, ORCH_FENCE, ORCH_ATTEMPT,
    ORCH_QUEUE, ORCH_WORKER and ORCH_TOKEN in its environment; orch work heartbeats
    the lease while it runs. Exit 0: succeeded (stdout, if JSON, is the result).
    Exit 75: retry later (requeued, claimable after --retry-in). Anything else:
    failed, with the end of stderr as the error. A lost lease stops the command
    (SIGTERM to its process group, SIGKILL after --kill-after) and releases nothing;
    a cancel request stops it too, and the item is released cancelled.

    \b
    Example:
      orch work --queue crawl --concurrency 4 -- ./crawl-one.sh
    """
    from . import work as worker

    s = settings()
    env = {name: value if isinstance(value, str) else str(Path(value).expanduser().resolve())
           for name, value in (("ORCH_DB", s.db), ("ORCH_SOCKET", s.socket))
           if value is not None}
    opts = worker.options(list(command_), worker_id=worker_id, queues=list(queues),
                          concurrency=concurrency, ttl_s=ttl, max_items=max_items,
                          grace_s=grace, kill_after_s=kill_after, retry_in_s=retry_in, env=env)
    out(worker.run(settings().backend(), opts), fmt.work_summary)
    return 0


@command(cli)
@click.option("--session", "session_id", type=int, required=True, help="The session's id.")
def replay(session_id) -> int:
    """Show a session, its goals and their tool executions, with the events behind them.

    \b
    Example:
      orch replay --session 12 --json
    """
    out(settings().backend(create=False).replay_session(session_id), fmt.replay_text)
    return 0


@command(cli)
@click.argument("item_id", type=int)
def why(item_id) -> int:
    """Explain why an item is where it is, from the events behind it.

    \b
    Example:
      orch why 42
    """
    out(settings().backend(create=False).explain_task(item_id), lambda r: r["text"])
    return 0


def _http_address(_ctx: click.Context, _param: click.Parameter,
                  value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:8787
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r}: give HOST:PORT, such as 127.0.0.1:8787 "
                                 "(port 0 picks a free one)")
    return host, int(port)


@command(cli)
@click.option("--synchronous", type=click.Choice(["full", "normal"]), default="full",
              show_default=True,
              help="normal is faster but a power loss may drop the last commits.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Rotated log file [default: <home>/logs/orchestrator.log].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default="INFO", show_default=True, help="Least severe level logged.")
@click.option("--recover-every", type=float, default=defaults.RECOVER_EVERY_S, show_default=True,
              help="Seconds between the daemon's own recovery passes.")
@click.option("--line-timeout", type=click.FloatRange(0, min_open=True),
              default=defaults.LINE_TIMEOUT_S,
              show_default=True,
              help="Seconds a request line may take from its first byte to its newline.")
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True),
              default=defaults.IDLE_TIMEOUT_S,
              show_default=True,
              help="Seconds a connection may stay without a request (a parked claim is "
                   "a request).")
@click.option("--max-connections", type=click.IntRange(1), default=defaults.MAX_CONNECTIONS,
              show_default=True,
              help="Connections served at once; more are refused with error "
                   f"{RPC_LIMIT_EXCEEDED}.")
@click.option("--max-buffered-mib", type=click.FloatRange(0, min_open=True),
              default=defaults.MAX_BUFFERED_MIB,
              show_default=True,
              help="Unread input held for all clients together; past it the client "
                   "holding the most is dropped.")
@click.option("--http", metavar="HOST:PORT", default=None, callback=_http_address,
              help="Also serve the web view there (port 0: any free port); orch web "
                   "prints its URL. Off unless given; keep HOST a loopback address.")
@click.option("--writer-lanes", type=click.IntRange(1, 64), default=defaults.WRITER_LANES,
              show_default=True,
              help="PostgreSQL: group commits run side by side, each on a connection of "
                   "its own (SQLite has one writer).")
def daemon(synchronous, log_file, log_level, recover_every, line_timeout, idle_timeout,
           max_connections, max_buffered_mib, http, writer_lanes) -> int:
    """Serve JSON-RPC on the Unix socket for local agents (stop with SIGTERM).

    \b
    Example:
      orch daemon --log-level DEBUG
      orch daemon --http 127.0.0.1:8787
    """
    from . import daemon as server

    s = settings()
    return server.run(s.db or paths.default_db(), s.socket or paths.default_socket(),
                      synchronous=synchronous,
                      log_file=Path(log_file) if log_file else paths.default_log_file(),
                      log_level=log_level, recover_every_s=recover_every,
                      line_timeout_s=line_timeout, idle_timeout_s=idle_timeout,
                      max_connections=max_connections,
                      max_buffered=int(max_buffered_mib * (1 << 20)), http=http,
                      writer_lanes=writer_lanes)


@command(cli)
@click.option("--open", "open_", is_flag=True, default=False,
              help="Also open it in the browser.")
def web(open_) -> int:
    """Print the URL of the running daemon's web view, with its access token.

    The daemon serves one with orch daemon --http HOST:PORT. The token logs the
    browser in once and leaves the address bar; keep the URL to yourself.

    \b
    Example:
      orch web --open
    """
    from .web import access

    sock = settings().socket or paths.default_socket()
    url = access.login_url(access.read(sock))
    if open_:
        import webbrowser

        # Through a 0600 page that forwards the browser: a URL on the browser's command
        # line would show the token to every user of the machine (ps).
        webbrowser.open(access.write_opener(sock, url).as_uri())
    out({"url": url}, url)
    return 0


# --- entry point --------------------------------------------------------------------------


def fail(message: str, code: int) -> int:
    # One line of single spaces: click's messages hold newlines and tabs (choice lists).
    click.echo(f"orch: error: {' '.join(message.split())}", err=True)
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; the one place errors become exit codes."""
    ctx_obj = Settings()
    try:
        rv = cli.main(args=argv, prog_name="orch", standalone_mode=False, obj=ctx_obj)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        return fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        return fail("aborted", 1)
    except OrchError as exc:
        return fail(str(exc).replace("\n", " "), exit_code(exc))
    except BrokenPipeError:
        return 1
    finally:
        ctx_obj.close()
