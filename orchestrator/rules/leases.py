"""Leases: claiming an item, proving a claim is live, renewing it, and releasing it.

A claim gets a new fence (the sequence number of its ``claimed`` event, so fences only
grow) and a new token. Every holder write presents the token; ``held`` refuses it with
LEASE_LOST unless it is the item's live claim and, for a goal or tool execution, every
ancestor still holds the claim the child was made under.
"""

from __future__ import annotations

from typing import Any

from .. import events as ev
from ..clock import iso
from ..errors import Conflict, InvalidInput, LeaseLost, NotFound, rpc_code
from ..model import (
    HOLDER_KINDS,
    PARENT_KIND,
    Claim,
    EventType,
    Item,
    ItemRow,
    Outcome,
    Reason,
    Status,
)
from ..store import Tx
from ..validate import claimed_through
from .recovery import fence_children, recover_to_claim
from .tokens import new_token, same_token
from .transitions import attempts_left, backoff_ms, emit, get_row, register_worker, settle
from .views import lease_view, public


def held(tx: Tx, item_id: int, token: str, now: int) -> ItemRow:
    """The item, if ``token`` is its live claim (and, for a goal or tool execution,
    every ancestor still holds the claim it was made under); otherwise LEASE_LOST."""
    row = get_row(tx, item_id)
    if row["status"] != Status.RUNNING or not same_token(row, token):
        raise LeaseLost(f"item {item_id}: the token is not its current claim "
                        f"(item is {row['status']})",
                        data={"item_id": item_id, "status": row["status"]})
    assert row["lease_expires_at"] is not None, "a running item has a lease"
    if row["lease_expires_at"] <= now:
        raise LeaseLost(f"item {item_id}: the lease expired at {iso(row['lease_expires_at'])}",
                        data={"item_id": item_id, "status": row["status"]})
    if row["kind"] in PARENT_KIND:
        lost = lost_ancestor(tx, row, now)
        if lost is not None:
            ancestor, why = lost
            raise LeaseLost(f"item {item_id}: the lease of its {ancestor['kind']} "
                            f"{ancestor['id']} is gone ({why})",
                            data={"item_id": item_id, "status": row["status"],
                                  "ancestor_id": ancestor["id"]})
    return row


def lost_ancestor(tx: Tx, row: ItemRow, now: int) -> tuple[ItemRow, str] | None:
    """The first ancestor of a goal or tool execution whose claim, the one the child's
    claim was made under, is no longer its live claim, and why; None when all hold.

    A child is claimed only while its parent's claim is live and current, so that
    claim's fence is below the child's; any later claim of the parent gets a higher
    fence (fences only grow). So the parent still holds that claim exactly when it is
    running, its lease has not ended, and its fence is below the child's.
    """
    child = row
    while child["kind"] in PARENT_KIND:
        assert child["parent_id"] is not None, "a goal or tool execution has a parent"
        parent = tx.item("ancestor", {"id": child["parent_id"]})
        assert parent is not None, "items are never deleted"
        if parent["status"] != Status.RUNNING:
            return parent, f"the {parent['kind']} is {parent['status']}"
        assert parent["lease_expires_at"] is not None and parent["fence"] is not None \
            and child["fence"] is not None, "running items and their children were claimed"
        if parent["lease_expires_at"] <= now:
            return parent, f"its lease expired at {iso(parent['lease_expires_at'])}"
        if parent["fence"] > child["fence"]:
            return parent, (f"the {parent['kind']} was claimed again, fence "
                            f"{parent['fence']}")
        child = parent
    return None


# --- claim ----------------------------------------------------------------------------


def claim_task(tx: Tx, now: int, *, worker_id: str, queues: list[str], ttl: int,
               kinds: list[str], item_id: int | None = None, wait: int = 0) -> Claim | None:
    """Claim the best claimable item, or ``item_id``; None when nothing is claimable.

    ``wait`` is the caller's business (the embedded API polls, the daemon parks).
    """
    if item_id is not None:
        row = get_row(tx, item_id)
        expires = row["lease_expires_at"]
        if row["status"] == Status.RUNNING and expires is not None and expires <= now:
            recover_to_claim(tx, now, row, worker_id)  # taken over, or refused
        elif row["kind"] in PARENT_KIND:
            raise InvalidInput(f"item_id: item {item_id} is a {row['kind']}; "
                               f"{claimed_through(row['kind'])}",
                               data={"field": "item_id"})
        elif row["status"] == Status.RUNNING:
            raise Conflict(
                f"item {item_id} is held by {row['worker_id']} until "
                f"{iso(row['lease_expires_at'])}",
                data={"item_id": item_id, "worker_id": row["worker_id"],
                      "lease_expires_at": row["lease_expires_at"]})
        elif row["status"] != Status.PENDING:
            raise Conflict(f"item {item_id} is {row['status']}: only a pending item or an "
                           "expired lease can be claimed",
                           data={"item_id": item_id, "status": row["status"]})
        return claim_row(tx, now, item_id, worker_id, ttl, row)
    best = None
    for kind in kinds:
        for queue in queues:
            c = tx.item("next_claimable", {"kind": kind, "queue": queue, "now": now})
            if c is not None and (best is None or (c["priority"], -c["id"])
                                  > (best["priority"], -best["id"])):
                best = c
    if best is None:
        return None
    return claim_row(tx, now, best["id"], worker_id, ttl, best)


def claim_row(tx: Tx, now: int, item_id: int, worker_id: str, ttl: int,
              row: ItemRow | None = None) -> Claim:
    """Claim the item (``row``: as this transaction read it, if at hand)."""
    if row is None:
        row = get_row(tx, item_id)
    # The fence is the sequence number of the 'claimed' event appended below.
    fence = ev.next_seq(tx)
    token, token_hash = new_token()
    # The new row as the claim query writes it (cheaper than reading it back).
    new: ItemRow = {**row, "status": Status.RUNNING, "attempts": row["attempts"] + 1,
                    "worker_id": worker_id, "fence": fence, "token_hash": token_hash,
                    "lease_ttl_ms": ttl, "lease_expires_at": now + ttl, "heartbeat_at": now,
                    "updated_at": now, "cancel_requested": 0}
    tx.run("claim_item", new)
    register_worker(tx, now, worker_id, now + ttl)
    emit(tx, now, new, EventType.CLAIMED, ev.CLAIMED)
    assert tx.last_seq == fence, "a claim's fence is its claimed event's sequence"
    return {**public(new), "token": token, "attempt": new["attempts"]}


# --- heartbeat ------------------------------------------------------------------------


def heartbeat(tx: Tx, now: int, *, item_id: int | None, token: str | None,
              ttl: int | None, leases: list[dict] | None) -> dict:
    """Extend one lease (``item_id`` and ``token``) or several (``leases``).

    Several: each lease is extended or refused on its own, in a savepoint of its own,
    and the answer lists each in the order given.
    """
    if leases is not None:
        if item_id is not None or token is not None:
            raise InvalidInput("heartbeat: give item_id with token, or leases, not both",
                               data={"field": "leases"})
        return {"leases": [beat_one(tx, now, lease["item_id"], lease["token"], ttl)
                           for lease in leases]}
    if item_id is None or token is None:
        raise InvalidInput("heartbeat: give item_id with token, or leases=[{item_id, token}]",
                           data={"field": "token" if item_id is not None else "item_id"})
    return beat(tx, now, item_id, token, ttl)


def beat(tx: Tx, now: int, item_id: int, token: str, ttl: int | None) -> dict:
    row = held(tx, item_id, token, now)
    new = extend(tx, now, row, ttl)
    assert new["worker_id"] is not None and new["lease_expires_at"] is not None
    register_worker(tx, now, new["worker_id"], new["lease_expires_at"])
    return lease_view(new)


def beat_one(tx: Tx, now: int, item_id: int, token: str, ttl: int | None) -> dict:
    """``beat``, or the reason it was refused; a refusal undoes only its own lease."""
    try:
        with tx.savepoint():
            return beat(tx, now, item_id, token, ttl)
    except (LeaseLost, NotFound) as exc:
        return {"id": item_id, "error": {"code": rpc_code(exc), "reason": exc.reason,
                                         "message": str(exc)}}


def extend(tx: Tx, now: int, row: ItemRow, ttl: int | None) -> ItemRow:
    ttl = ttl or row["lease_ttl_ms"]
    assert ttl is not None, "a running item has a lease"
    new = tx.item("extend_lease", {"id": row["id"], "now": now, "expires": now + ttl})
    assert new is not None, "the item was read in this transaction"
    emit(tx, now, new, EventType.HEARTBEAT, ev.HEARTBEAT)
    return new


# --- release --------------------------------------------------------------------------


def release_task(tx: Tx, now: int, *, item_id: int, token: str, outcome: str,
                 result: str | None, error: str | None, retry_in: int | None,
                 no_retry: bool) -> Item:
    row = held(tx, item_id, token, now)
    run_after = None
    if outcome in (Outcome.SUCCEEDED, Outcome.CANCELLED):
        status = outcome
    elif row["cancel_requested"]:
        status = Status.CANCELLED  # the holder gave up after a cancel request: do not rerun
    elif outcome == Outcome.REQUEUE and attempts_left(row):
        status, run_after = Status.PENDING, now + (retry_in or 0)
    elif outcome == Outcome.REQUEUE:
        status = Status.DEAD  # the claim counted, and it was the last one allowed
    elif no_retry:
        status = Status.FAILED
    elif attempts_left(row):
        status = Status.PENDING
        run_after = now + (retry_in if retry_in is not None else backoff_ms(row["attempts"]))
    else:
        status = Status.DEAD
    new = settle(tx, now, row, status, run_after=run_after, result=result, error=error)
    emit(tx, now, new, EventType.RELEASED, ev.SETTLED, outcome=outcome)
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, Reason.PARENT_RELEASED, [], {row["id"]})
    return public(new)


def release_and_claim(tx: Tx, now: int, *, item_id: int, token: str, outcome: str,
                      result: str | None, error: str | None, retry_in: int | None,
                      no_retry: bool, worker_id: str | None, queues: list[str] | None,
                      kinds: list[str] | None, ttl: int | None, wait: int = 0) -> dict:
    """``release_task``, then ``claim_task`` for the next item, in one transaction.

    A worker loop's two commits become one. The claim goes like the released one
    unless told otherwise: same worker, the item's queue and kind, its lease length.
    An invalid release changes nothing and claims nothing.
    """
    released = release_task(tx, now, item_id=item_id, token=token, outcome=outcome,
                            result=result, error=error, retry_in=retry_in, no_retry=no_retry)
    nxt = claim_task(tx, now, **next_claim(released, worker_id=worker_id, queues=queues,
                                           kinds=kinds, ttl=ttl))
    return {"released": released, "next": nxt}


def next_claim(released: Item, *, worker_id: str | None, queues: list[str] | None,
               kinds: list[str] | None, ttl: int | None, wait: int = 0, **_: Any) -> dict:
    """The ``claim_task`` parameters of a ``release_and_claim`` (its defaults filled in)."""
    if not kinds and released["kind"] in PARENT_KIND:
        raise InvalidInput(f"kinds: give the next claim's kinds: "
                           f"{claimed_through(released['kind'])}", data={"field": "kinds"})
    return {"worker_id": worker_id or released["worker_id"],
            "queues": queues or [released["queue"]], "kinds": kinds or [released["kind"]],
            "ttl": ttl or released["lease_ttl_ms"], "item_id": None, "wait": wait}
