"""What orch's data is made of: the value sets as enums, the rows as typed dicts.

Each ``StrEnum`` member is a ``str`` equal to its value (``Status.PENDING == "pending"``)
and is written by ``json`` and SQLite as that string, so code compares database values
with the members and the stored and wire forms stay plain strings. This module imports
nothing of orch: the CLI and the socket client use it without the engine.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict


class Kind(StrEnum):
    TASK = "task"
    SESSION = "session"
    GOAL = "goal"
    TOOL_EXECUTION = "tool_execution"


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class Outcome(StrEnum):
    """How a holder ends its claim (``release_task``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUE = "requeue"


class Resolution(StrEnum):
    """How a person or agent settles an ``unknown`` item (``resolve_task``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"


class Effect(StrEnum):
    IDEMPOTENT = "idempotent"  # retried after a lost lease
    UNSAFE = "unsafe"  # its side effect may have happened: never rerun blindly


class EventType(StrEnum):
    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    HEARTBEAT = "heartbeat"
    CHECKPOINT = "checkpoint"
    RELEASED = "released"
    EXPIRED = "expired"
    TAKEN_OVER = "taken_over"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    RESOLVED = "resolved"
    REQUEUED = "requeued"  # a dead, failed or cancelled item made pending again (orch retry)


class Reason(StrEnum):
    """Why an ``expired`` event fenced its holder out."""

    LEASE_EXPIRED = "lease_expired"
    PARENT_LEASE_LOST = "parent_lease_lost"
    PARENT_TAKEN_OVER = "parent_taken_over"
    PARENT_RELEASED = "parent_released"


#: A goal's parent is a session, a tool execution's a goal.
PARENT_KIND: dict[str, Kind] = {Kind.GOAL: Kind.SESSION, Kind.TOOL_EXECUTION: Kind.GOAL}
#: Kinds whose lease covers their children.
HOLDER_KINDS = (Kind.SESSION, Kind.GOAL)
#: What submit makes and a claim hands out: the kinds without a parent. Goals and tool
#: executions are made and claimed only under their parent's lease, for its holder.
CLAIM_KINDS: tuple[Kind, ...] = tuple(k for k in Kind if k not in PARENT_KIND)
SUBMIT_KINDS = CLAIM_KINDS

#: Item columns stored as JSON text: decoded for callers, digested in events.
JSON_COLUMNS = ("payload", "checkpoint", "result")


class _Lease(TypedDict):
    worker_id: str | None  # kept after the lease ends, naming the last holder
    fence: int | None
    lease_ttl_ms: int | None
    lease_expires_at: int | None
    heartbeat_at: int | None


class ExpiredRow(TypedDict):
    """What recovery reads of an expired lease (``expired_leases``), not the whole row,
    and all that settling any item needs of it: an ``ItemRow`` is one too."""

    id: int
    kind: str
    queue: str
    effect: str
    status: str
    attempts: int
    max_attempts: int
    run_after: int
    result: str | None
    error: str | None
    worker_id: str | None
    fence: int | None
    lease_expires_at: int | None
    heartbeat_at: int | None
    cancel_requested: int
    last_event: int


class ItemRow(_Lease):
    """An ``items`` row as the store returns it (JSON columns as text)."""

    id: int
    kind: str
    queue: str
    parent_id: int | None
    key: str | None
    payload: str
    priority: int
    status: str
    attempts: int
    max_attempts: int  # 0: no limit
    run_after: int
    effect: str
    checkpoint: str | None
    result: str | None
    error: str | None
    token_hash: str | None
    cancel_requested: int
    created_at: int
    updated_at: int
    last_event: int


class Item(_Lease):
    """An item as callers see it: JSON values decoded, no token hash."""

    id: int
    kind: str
    queue: str
    parent_id: int | None
    key: str | None
    payload: Any
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_after: int
    effect: str
    checkpoint: Any
    result: Any
    error: str | None
    cancel_requested: bool
    created_at: int
    updated_at: int


class Claim(Item):
    """An item just claimed: the secret that names the claim, and its attempt number."""

    token: str
    attempt: int


class EventRow(TypedDict):
    """An ``event_log`` row (``detail`` as JSON text)."""

    seq: int
    at: int
    item_id: int | None
    type: str
    worker_id: str | None
    fence: int | None
    detail: str
    prev_hash: str
    hash: str
    item_prev: int | None  # the item's previous event (0: none); None before the links


class Event(TypedDict):
    """An event as callers see it: an ``EventRow`` with ``detail`` decoded."""

    seq: int
    at: int
    item_id: int | None
    type: str
    worker_id: str | None
    fence: int | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    item_prev: int | None


class WorkerRow(TypedDict):
    """A ``workers`` row: when a worker was first and last seen, and its latest lease end."""

    worker_id: str
    first_seen: int
    last_seen: int
    lease_expires_at: int
