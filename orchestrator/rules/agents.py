"""Agent records: sessions, goals and tool executions, as lease-protected work items.

A session is an agent's run; goals are created under the session's lease and tool
executions under a goal's. A child is keyed within its parent (its queue is
``session:<id>`` or ``goal:<id>``), so keys are scoped to the parent, and the child is
claimed for the parent's holder in the same transaction that creates it.
"""

from __future__ import annotations

import hashlib
import json

from .. import defaults
from ..errors import Conflict, InvalidInput
from ..model import Claim, ItemRow, Kind, Reason, Status
from ..store import Tx
from .leases import claim_row, claim_task, held
from .recovery import expire
from .submit import submit_task
from .transitions import get_row
from .views import event_view, public


def _expect_kind(row: ItemRow, kind: str, field: str) -> None:
    if row["kind"] != kind:
        raise InvalidInput(f"{field}: item {row['id']} is a {row['kind']}, not a {kind}",
                           data={"field": field})


def start_session(tx: Tx, now: int, *, worker_id: str, key: str | None, payload: str,
                  ttl: int) -> dict:
    """Create a session and claim it for ``worker_id``; an existing key resumes it."""
    if key is not None:
        existing = tx.item("item_by_key",
                           {"kind": Kind.SESSION, "queue": defaults.QUEUE, "key": key})
        if existing is not None:
            if existing["status"] not in (Status.PENDING, Status.RUNNING):
                return {**public(existing), "created": False, "claimed": False}  # finished
            return {**resume_session(tx, now, session_id=existing["id"], worker_id=worker_id,
                                     ttl=ttl), "created": False, "claimed": True}
    item = submit_task(tx, now, payload=payload, queue=defaults.QUEUE, priority=0, key=key,
                       max_attempts=None, delay=0, kind=Kind.SESSION, parent_id=None,
                       effect=None, _internal=True)
    return {**claim_row(tx, now, item["id"], worker_id, ttl), "created": True, "claimed": True}


def resume_session(tx: Tx, now: int, *, session_id: int, worker_id: str, ttl: int) -> Claim:
    """Claim a session again once its old lease is gone; the claim carries its checkpoint."""
    _expect_kind(get_row(tx, session_id), Kind.SESSION, "session_id")
    claim = claim_task(tx, now, worker_id=worker_id, queues=[], ttl=ttl, kinds=[],
                       item_id=session_id)
    assert claim is not None, "a claim by id is made or refused"
    return claim


def _child(tx: Tx, now: int, parent: ItemRow, kind: str, key: str | None, payload: str,
           effect: str | None, ttl: int | None) -> dict:
    """The one child of ``parent`` with ``key``: created and claimed, or as it stands.

    An existing child that nobody can be running any more (pending, a lease that has
    expired, or one made under an earlier claim of the parent) is recovered, then
    claimed for the parent's holder if recovery made it pending; one whose side
    effect may have happened is never rerun (recovery makes it ``unknown``).
    """
    holder, fence = parent["worker_id"], parent["fence"]
    ttl = ttl or parent["lease_ttl_ms"]
    assert holder is not None and fence is not None and ttl is not None, "a held parent"
    queue = f"{parent['kind']}:{parent['id']}"
    row = None if key is None else tx.item("item_by_key",
                                           {"kind": kind, "queue": queue, "key": key})
    if row is None:
        item = submit_task(tx, now, payload=payload, queue=queue, priority=0, key=key,
                           max_attempts=None, delay=0, kind=kind, parent_id=parent["id"],
                           effect=effect, _internal=True)
        return {**claim_row(tx, now, item["id"], holder, ttl),
                "created": True, "claimed": True}
    expires, row_fence = row["lease_expires_at"], row["fence"]
    if row["status"] == Status.RUNNING and expires is not None and expires <= now:
        expire(tx, now, row, Reason.LEASE_EXPIRED, [], set())
        row = get_row(tx, row["id"])
    elif row["status"] == Status.RUNNING and row_fence is not None and row_fence < fence:
        # Claimed under an earlier claim of the parent, which ended without fencing it
        # out (a file written before ending a claim fenced the children).
        expire(tx, now, row, Reason.PARENT_LEASE_LOST, [], set())
        row = get_row(tx, row["id"])
    if row["status"] == Status.PENDING:
        return {**claim_row(tx, now, row["id"], holder, ttl),
                "created": False, "claimed": True}
    return {**public(row), "created": False, "claimed": False}


def create_goal(tx: Tx, now: int, *, session_id: int, token: str, payload: str,
                key: str | None, ttl: int | None) -> dict:
    """A goal under the session, claimed for the session's holder (its token returned)."""
    session = held(tx, session_id, token, now)
    _expect_kind(session, Kind.SESSION, "session_id")
    return _child(tx, now, session, Kind.GOAL, key, payload, None, ttl)


def canonical_key(tool: str, input_text: str) -> str:
    canonical = json.dumps(json.loads(input_text), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return f"auto:{tool}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def execute_tool_idempotent(tx: Tx, now: int, *, goal_id: int, token: str, tool: str,
                            input: str, key: str | None, effect: str | None,
                            ttl: int | None, wait: int = 0) -> dict:
    """The one execution of ``tool`` for ``key`` under the goal.

    Created and claimed by the caller the first time; afterwards the existing one with
    its status and result (a succeeded execution is never run again).
    """
    goal = held(tx, goal_id, token, now)
    _expect_kind(goal, Kind.GOAL, "goal_id")
    key = key or canonical_key(tool, input)
    payload = json.dumps({"tool": tool, "input": json.loads(input)},
                         separators=(",", ":"), ensure_ascii=False)
    out = _child(tx, now, goal, Kind.TOOL_EXECUTION, key, payload, effect, ttl)
    if out["payload"].get("tool") != tool:  # raising undoes any claim made above
        raise Conflict(f"key {key!r} names an execution of tool "
                       f"{out['payload'].get('tool')!r}, not {tool!r}",
                       data={"item_id": out["id"], "key": key})
    return out


def replay_session(tx: Tx, now: int, *, session_id: int) -> dict:
    """The session, its goals and their tool executions, each with its events."""
    session = get_row(tx, session_id)
    _expect_kind(session, Kind.SESSION, "session_id")

    def node(row: ItemRow) -> dict:
        events = [event_view(e) for e in
                  tx.events("events_of_item", {"item_id": row["id"], "since": 0, "limit": -1})]
        children = [node(c) for c in tx.items("children", {"id": row["id"]})]
        out = {**public(row), "events": events}
        if row["kind"] == Kind.SESSION:
            out["goals"] = children
        elif row["kind"] == Kind.GOAL:
            out["tool_executions"] = children
        return out

    return node(session)
