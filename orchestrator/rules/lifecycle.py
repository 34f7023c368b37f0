"""The rest of an item's life: cancelling it, saving the holder's progress, settling
an item whose outcome is unknown, and giving a finished item another run.

The actions a person takes (cancel, resolve, retry) take ``by``, a short name of who
acted (``web:alice`` from the web view), recorded in the event's detail when given.
"""

from __future__ import annotations

import json

from .. import events as ev
from ..errors import Conflict
from ..model import PARENT_KIND, EventType, Item, Kind, Resolution, Status
from ..store import Tx
from .leases import held
from .transitions import emit, get_row, settle
from .views import public


def _by(by: str | None) -> dict[str, str]:
    return {"by": by} if by else {}


def cancel_task(tx: Tx, now: int, *, item_id: int, by: str | None = None) -> Item:
    row = get_row(tx, item_id)
    if row["status"] == Status.PENDING:
        new = settle(tx, now, row, Status.CANCELLED, keep=True)
        emit(tx, now, new, EventType.CANCELLED, ev.SETTLED, **_by(by))
        return public(new)
    if row["status"] == Status.RUNNING:
        if row["cancel_requested"]:
            return public(row)  # asked already: nothing new to record
        asked = tx.item("request_cancel", {"id": item_id, "now": now})
        assert asked is not None, "the item was read in this transaction"
        emit(tx, now, asked, EventType.CANCEL_REQUESTED, ev.CANCEL_REQUESTED, **_by(by))
        return public(asked)
    hint = "; resolve it with orch resolve" if row["status"] == Status.UNKNOWN else ""
    raise Conflict(f"item {item_id} is {row['status']} and cannot be cancelled{hint}",
                   data={"item_id": item_id, "status": row["status"]})


def checkpoint(tx: Tx, now: int, *, item_id: int, token: str, data: str) -> dict:
    held(tx, item_id, token, now)
    new = tx.item("save_checkpoint", {"id": item_id, "checkpoint": data, "now": now})
    assert new is not None, "the item was read in this transaction"
    emit(tx, now, new, EventType.CHECKPOINT, ev.CHECKPOINT, size=len(data.encode()))
    return {"id": item_id, "fence": new["fence"], "checkpoint": json.loads(data)}


def resolve_task(tx: Tx, now: int, *, item_id: int, outcome: str,
                 by: str | None = None) -> Item:
    row = get_row(tx, item_id)
    if row["status"] != Status.UNKNOWN:
        raise Conflict(f"item {item_id} is {row['status']}: only unknown items are resolved",
                       data={"item_id": item_id, "status": row["status"]})
    if outcome == Resolution.RETRY:
        new = settle(tx, now, row, Status.PENDING, run_after=now, keep=True)
    else:
        new = settle(tx, now, row, outcome, keep=True)
    emit(tx, now, new, EventType.RESOLVED, ev.SETTLED, outcome=outcome, **_by(by))
    return public(new)


#: What ``retry_task`` takes back to pending: items whose run is over and that nobody
#: holds. Not ``succeeded`` (its work is done: submit it again), not ``unknown`` (its
#: side effect may have happened: ``resolve_task`` with ``retry`` says someone checked).
RETRYABLE = (Status.DEAD, Status.FAILED, Status.CANCELLED)


def retry_task(tx: Tx, now: int, *, item_id: int, by: str | None = None) -> Item:
    """Make a dead, failed or cancelled item pending again, claimable at once, with a
    fresh attempt budget: as many more claims as it was submitted with.

    ``attempts`` keeps counting every claim (so ``why`` and ``show`` still tell how many
    runs it had); ``max_attempts`` becomes ``attempts`` plus the budget its ``submitted``
    event recorded (0, no limit, stays 0). One ``requeued`` event records it.
    """
    row = get_row(tx, item_id)
    if row["kind"] in PARENT_KIND:
        kind = "tool execution" if row["kind"] == Kind.TOOL_EXECUTION else row["kind"]
        raise Conflict(f"item {item_id} is a {kind}: it runs again only through its "
                       f"{PARENT_KIND[row['kind']]}'s holder, not by orch retry",
                       data={"item_id": item_id, "kind": row["kind"]})
    if row["status"] not in RETRYABLE:
        hint = (f"; resolve it with orch resolve {item_id} --outcome retry"
                if row["status"] == Status.UNKNOWN else "")
        raise Conflict(f"item {item_id} is {row['status']}: only dead, failed or cancelled "
                       f"items are retried{hint}",
                       data={"item_id": item_id, "status": row["status"]})
    budget = row["max_attempts"]
    first = tx.events("events_of_item", {"item_id": item_id, "since": 0, "limit": 1})
    if first and first[0]["type"] == EventType.SUBMITTED:
        budget = json.loads(first[0]["detail"])["max_attempts"]
    new = tx.item("requeue_item", {"id": item_id, "now": now,
                                   "max_attempts": row["attempts"] + budget if budget else 0})
    assert new is not None, "the item was read in this transaction"
    emit(tx, now, new, EventType.REQUEUED, ev.REQUEUED, previous_status=row["status"],
         **_by(by))
    return public(new)
