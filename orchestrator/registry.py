"""Every operation, once: one record each, from which every other table is derived.

An operation is one engine function ``fn(tx, now, **params)`` (see ``rules``). Its
record says what the rest of orch needs to know of it: the Python API method
(``interface.Operations``, the same name), the JSON-RPC method, the parameters and
their rules, whether it writes, whether and how it waits, whether it can make items
claimable, and the ``orch`` command that calls it. ``protocol.METHODS``,
``operations.OPERATIONS``, ``api.WAITS``, ``validate.check`` and the daemon's
``FEEDS``/``WAITED`` all come from here, and ``tests/test_registry.py`` fails when an
operation lacks its wire name, parameters, engine function, API method, command or
README entry.

To add an operation: a record here, its engine function, its ``Operations`` method,
its command in ``cli.py`` (or ``no_cli`` saying why not), and its wire name in both
READMEs' protocol section.

This module imports neither the engine nor APSW (engine functions are named, and
imported on first use): the CLI and the socket client load it on every start.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .model import Status
from .validate import (
    DEFAULT_TTL_MS,
    EFFECTS,
    KINDS,
    MAX_TOOL_BYTES,
    OUTCOMES,
    REQUIRED,
    RESOLUTIONS,
    STATUSES,
    Batch,
    Spec,
    boolean,
    choice,
    claim_kind,
    delay,
    error_text,
    integer,
    item_id,
    json_value,
    key,
    leases,
    list_of,
    optional,
    queue,
    text,
    token,
    ttl,
    worker,
)


@dataclass(frozen=True, slots=True)
class Operation:
    #: The Python API method and the engine's name for it (snake_case).
    name: str
    #: The JSON-RPC method (camelCase).
    wire: str
    #: The engine function, ``"module:function"`` under ``orchestrator``.
    engine: str
    #: Runs in a write transaction (the daemon's group commit), else on a read snapshot.
    writes: bool
    #: Its parameters: the rules each must pass, and the defaults.
    params: Spec
    #: The ``orch`` command that calls it (``"session start"`` for a subcommand) ...
    cli: str | None
    #: ... or, when there is none, why not.
    no_cli: str = ""
    #: It takes ``wait`` and may wait; given here: when its answer is final (an API
    #: without anyone to wake it polls until then).
    settled: Callable[[Any], bool] | None = None
    #: With ``wait``, the daemon parks it (never on the direct write path).
    parks: bool = False
    #: What it commits can make items claimable: the daemon wakes parked claims after it.
    feeds: bool = False

    @property
    def function(self) -> Callable[..., Any]:
        return _resolve(self.engine)


@functools.cache
def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return fn


_LIMIT = integer(0, 1_000_000_000)
#: Who took an action (cancel, resolve, retry), for its event: a name like a worker id.
BY = (optional(worker), None)

SUBMIT = Spec({
    "payload": (json_value, "null"),  # defaults are given normalised
    "queue": (queue, defaults.QUEUE),
    "priority": (integer(), 0),
    "key": (optional(key), None),
    "max_attempts": (optional(integer(0, 1_000_000)), None),
    "delay": (delay, 0),
    "kind": (choice(KINDS), defaults.KIND),
    "parent_id": (optional(item_id), None),
    "effect": (optional(choice(EFFECTS)), None),
})

RELEASE = {
    "item_id": (item_id, REQUIRED),
    "token": (token, REQUIRED),
    "outcome": (choice(OUTCOMES), REQUIRED),
    "result": (json_value, None),
    "error": (optional(error_text), None),
    "retry_in": (optional(delay), None),
    "no_retry": (boolean, False),
}


def _claim_settled(claim: Any) -> bool:
    return claim is not None


def _execution_settled(out: Any) -> bool:
    # An execution someone else is running: wait for its outcome.
    return bool(out["claimed"]) or out["status"] != Status.RUNNING


BY_NAME: dict[str, Operation] = {op.name: op for op in (
    Operation(
        "submit_task", "submitTask", "rules.submit:submit_task", True, SUBMIT,
        cli="submit", feeds=True),
    Operation(
        "submit_many", "submitMany", "rules.submit:submit_many", True,
        Batch("items", SUBMIT, "submit parameters"), cli=None,
        no_cli="a batch is for programs; a script submits one item per orch submit",
        feeds=True),
    Operation(
        "claim_task", "claimTask", "rules.leases:claim_task", True, Spec({
            "worker_id": (worker, REQUIRED),
            "queues": (list_of(queue), [defaults.QUEUE]),
            "ttl": (ttl, DEFAULT_TTL_MS),
            "kinds": (list_of(claim_kind), [defaults.KIND]),
            "item_id": (optional(item_id), None),
            "wait": (delay, 0),
        }), cli="claim", settled=_claim_settled, parks=True),
    Operation(
        "heartbeat", "heartbeat", "rules.leases:heartbeat", True, Spec({
            "item_id": (optional(item_id), None),
            "token": (optional(token), None),
            "ttl": (optional(ttl), None),
            "leases": (optional(leases), None),
        }, retired={"worker_id": (
            "worker_id: no longer accepted: a heartbeat by worker name would keep the "
            "leases of a dead process alive for a new one reusing its name; present each "
            "lease as item_id and token (leases=[{item_id, token}, ...] for several)")}),
        cli="heartbeat"),
    Operation(
        "release_task", "releaseTask", "rules.leases:release_task", True, Spec(RELEASE),
        cli="release", feeds=True),
    Operation(
        "release_and_claim", "releaseAndClaim", "rules.leases:release_and_claim", True, Spec({
            **RELEASE,
            # the next claim: by default like the released one (see rules.next_claim)
            "worker_id": (optional(worker), None),
            "queues": (optional(list_of(queue)), None),
            "kinds": (optional(list_of(claim_kind)), None),
            "ttl": (optional(ttl), None),
            "wait": (delay, 0),
        }), cli=None,
        no_cli="orch work releases and claims with it; a script runs release, then claim",
        parks=True, feeds=True),
    Operation(
        "stale_recovery", "staleRecovery", "rules.recovery:stale_recovery", True,
        Spec({"dry_run": (boolean, False)}), cli="recover", feeds=True),
    Operation(
        "cancel_task", "cancelTask", "rules.lifecycle:cancel_task", True,
        Spec({"item_id": (item_id, REQUIRED), "by": BY}), cli="cancel"),
    Operation(
        "checkpoint", "checkpoint", "rules.lifecycle:checkpoint", True, Spec({
            "item_id": (item_id, REQUIRED),
            "token": (token, REQUIRED),
            "data": (json_value, REQUIRED),
        }), cli="checkpoint"),
    Operation(
        "resolve_task", "resolveTask", "rules.lifecycle:resolve_task", True, Spec({
            "item_id": (item_id, REQUIRED),
            "outcome": (choice(RESOLUTIONS), REQUIRED),
            "by": BY,
        }), cli="resolve", feeds=True),
    Operation(
        "retry_task", "retryTask", "rules.lifecycle:retry_task", True,
        Spec({"item_id": (item_id, REQUIRED), "by": BY}), cli="retry", feeds=True),
    Operation(
        "get_task", "getTask", "rules.reads:get_task", False,
        Spec({"item_id": (item_id, REQUIRED)}), cli="show"),
    Operation(
        "list_tasks", "listTasks", "rules.reads:list_tasks", False, Spec({
            "status": (optional(choice(STATUSES)), None),
            "queue": (optional(queue), None),
            "kind": (optional(choice(KINDS)), None),
            "limit": (_LIMIT, defaults.LIST_LIMIT),
        }), cli="ls"),
    Operation(
        "list_events", "listEvents", "rules.reads:list_events", False, Spec({
            "item_id": (optional(item_id), None),
            "since": (integer(0), 0),
            "limit": (_LIMIT, defaults.EVENTS_LIMIT),
        }), cli="events"),
    Operation(
        "verify", "verify", "rules.reads:verify", False,
        Spec({"item_id": (item_id, REQUIRED), "token": (token, REQUIRED)}), cli="verify"),
    Operation(
        "status", "status", "rules.reads:status", False, Spec({}), cli="status"),
    Operation(
        "ping", "ping", "rules.reads:ping", False, Spec({}), cli=None,
        no_cli="the CLI pings to find the daemon; people ask orch status"),
    Operation(
        "start_session", "startSession", "rules.agents:start_session", True, Spec({
            "worker_id": (worker, REQUIRED),
            "key": (optional(key), None),
            "payload": (json_value, "null"),
            "ttl": (ttl, DEFAULT_TTL_MS),
        }), cli="session start"),
    Operation(
        "resume_session", "resumeSession", "rules.agents:resume_session", True, Spec({
            "session_id": (item_id, REQUIRED),
            "worker_id": (worker, REQUIRED),
            "ttl": (ttl, DEFAULT_TTL_MS),
        }), cli="session resume"),
    Operation(
        "create_goal", "createGoal", "rules.agents:create_goal", True, Spec({
            "session_id": (item_id, REQUIRED),
            "token": (token, REQUIRED),
            "payload": (json_value, "null"),
            "key": (optional(key), None),
            "ttl": (optional(ttl), None),
        }), cli="goal add"),
    Operation(
        "execute_tool_idempotent", "executeToolIdempotent",
        "rules.agents:execute_tool_idempotent", True, Spec({
            "goal_id": (item_id, REQUIRED),
            "token": (token, REQUIRED),
            "tool": (text(MAX_TOOL_BYTES), REQUIRED),
            "input": (json_value, "null"),
            "key": (optional(key), None),
            "effect": (optional(choice(EFFECTS)), None),
            "ttl": (optional(ttl), None),
            "wait": (delay, 0),
        }), cli="tool exec", settled=_execution_settled, parks=True),
    Operation(
        "replay_session", "replaySession", "rules.agents:replay_session", False,
        Spec({"session_id": (item_id, REQUIRED)}), cli="replay"),
    Operation(
        "overview", "overview", "rules.overview:overview", False,
        Spec({"since": (integer(0), 0), "counts": (boolean, True)}), cli=None,
        no_cli="the web view's overview page shows it (orch web); at a terminal, orch "
               "status and orch ls tell the same"),
    Operation(
        "explain_task", "explainTask", "rules.explain:explain_task", False,
        Spec({"item_id": (item_id, REQUIRED)}), cli="why"),
)}

#: Operations after which an item may have become claimable (the daemon wakes claims).
FEEDS = frozenset(op.name for op in BY_NAME.values() if op.feeds)
#: Operations whose ``wait`` makes them park: never on the daemon's direct path.
WAITED = frozenset(op.name for op in BY_NAME.values() if op.parks)
