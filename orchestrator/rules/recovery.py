"""Lost leases: what becomes of an item whose holder stopped renewing it.

``expire`` fences one holder out, and the running descendants its claim covered;
``expire_many`` does the same for many items that cover nothing, in bulk. A claim by
id of an expired lease (``recover_to_claim``) and a parent's release or takeover
(``fence_children``) follow the same rules as ``stale_recovery``.
"""

from __future__ import annotations

from typing import Any

from .. import events as ev
from ..clock import iso
from ..errors import Conflict
from ..model import (
    HOLDER_KINDS,
    PARENT_KIND,
    Effect,
    EventType,
    ExpiredRow,
    ItemRow,
    Reason,
    Status,
)
from ..store import CommitAndRaise, Rollback, Tx
from ..validate import claimed_through, dump_json
from .transitions import attempts_left, backoff_ms, emit, settle, settled


def after_lost_lease(row: ExpiredRow, now: int) -> tuple[Status, int | None]:
    """The status an item goes to when its lease is lost, and when it may run again."""
    if row["effect"] == Effect.UNSAFE:
        return Status.UNKNOWN, None  # its side effect may have happened: never rerun blindly
    if row["cancel_requested"]:
        return Status.CANCELLED, None
    if attempts_left(row):
        return Status.PENDING, now + backoff_ms(row["attempts"])
    return Status.DEAD, None


def _recovered(row: ExpiredRow, new: ExpiredRow, reason: str) -> dict[str, Any]:
    """What a recovery reports of one item."""
    return {"id": row["id"], "kind": row["kind"], "queue": row["queue"],
            "worker_id": row["worker_id"], "fence": row["fence"], "status": new["status"],
            "run_after": new["run_after"], "reason": reason}


def expire(tx: Tx, now: int, row: ExpiredRow, reason: str, done: list[dict[str, Any]],
           seen: set[int], child_reason: str = Reason.PARENT_LEASE_LOST) -> None:
    """Fence out a lost lease, then the running descendants it covered."""
    seen.add(row["id"])
    status, run_after = after_lost_lease(row, now)
    new = settle(tx, now, row, status, run_after=run_after, keep=True)
    emit(tx, now, new, EventType.EXPIRED, ev.SETTLED, reason=reason)
    done.append(_recovered(row, new, reason))
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, child_reason, done, seen)


def expire_many(tx: Tx, now: int, rows: list[ExpiredRow], done: list[dict[str, Any]]) -> None:
    """``expire`` for items that cover no children, with one executemany per table."""
    updates, events = [], []
    for row in rows:
        status, run_after = after_lost_lease(row, now)
        new = settled(row, now, status, run_after=run_after, result=row["result"],
                      error=row["error"])
        events.append(ev.chained(tx, now, row["id"], EventType.EXPIRED, row["worker_id"],
                                 row["fence"], expired_detail(new)))
        new["last_event"] = events[-1]["seq"]
        updates.append(new)
        done.append(_recovered(row, new, Reason.LEASE_EXPIRED))
    if rows:
        tx.run_many("insert_event", events)
        tx.run_many("settle_linked", updates)


def expired_detail(new: ExpiredRow) -> str:
    """``dump_json({**state_of(new, SETTLED), "reason": "lease_expired"})``, formatted
    directly for recovery in bulk (checked by the tests against the general path)."""
    result = "null" if new["result"] is None else f'"{ev.digest(new["result"])}"'
    return (f'{{"status":"{new["status"]}","run_after":{new["run_after"]},'
            f'"result_sha256":{result},"error":{dump_json(new["error"])},'
            f'"lease_expires_at":null,"heartbeat_at":null,"reason":"lease_expired"}}')


def stale_recovery(tx: Tx, now: int, *, dry_run: bool = False) -> dict:
    """Recover every expired lease; costs in proportion to what has expired.

    Sessions and goals go first, one by one, since each takes its running children
    with it; the rest, which cover nothing, are settled in bulk.
    """
    done: list[dict[str, Any]] = []
    seen: set[int] = set()
    expired = tx.expired("expired_leases", {"now": now, "limit": -1})
    for row in expired:
        if row["kind"] in HOLDER_KINDS and row["id"] not in seen:
            expire(tx, now, row, Reason.LEASE_EXPIRED, done, seen)
    expire_many(tx, now, [r for r in expired if r["id"] not in seen], done)
    result = {"recovered": done, "count": len(done), "dry_run": dry_run}
    if dry_run:
        raise Rollback(result)
    return result


def recover_to_claim(tx: Tx, now: int, row: ItemRow, worker_id: str) -> None:
    """Before a claim by id of an expired lease that recovery has not reached yet:
    what recovery would do. A task or session that recovery would send back to
    pending is taken over; anything else (unsafe, cancel requested, out of attempts,
    a goal or tool execution) is recovered, committed, and the claim refused."""
    status, _ = after_lost_lease(row, now)
    if status == Status.PENDING and row["kind"] not in PARENT_KIND:
        take_over(tx, now, row, worker_id)
        return
    expire(tx, now, row, Reason.LEASE_EXPIRED, [], set())
    why = (claimed_through(row["kind"]) if status == Status.PENDING else
           {Status.UNKNOWN: "its effect is unsafe, so it is not run again; resolve it with "
                            "orch resolve",
            Status.CANCELLED: "a cancel was requested",
            Status.DEAD: "it has no attempts left"}[status])
    raise CommitAndRaise(Conflict(
        f"item {row['id']}: the lease of {row['worker_id']} expired at "
        f"{iso(row['lease_expires_at'])}; recovered, it is now {status} ({why})",
        data={"item_id": row["id"], "status": status}))


def take_over(tx: Tx, now: int, row: ItemRow, worker_id: str) -> None:
    """Fence out the holder of an expired lease that recovery has not reached yet."""
    emit(tx, now, row, EventType.TAKEN_OVER, by=worker_id, previous_worker=row["worker_id"],
         previous_fence=row["fence"])
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, Reason.PARENT_TAKEN_OVER, [], {row["id"]})


def fence_children(tx: Tx, now: int, row: ExpiredRow, reason: str, done: list[dict[str, Any]],
                   seen: set[int]) -> None:
    """Fence out the running descendants of a session or goal whose claim has ended."""
    for child in tx.items("running_children", {"id": row["id"]}):
        if child["id"] not in seen:
            expire(tx, now, child, reason, done, seen, reason)
