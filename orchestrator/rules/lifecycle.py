"""The rest of an item's life: cancelling it, saving the holder's progress, and
settling an item whose outcome is unknown."""

from __future__ import annotations

import json

from .. import events as ev
from ..errors import Conflict
from ..model import EventType, Item, Resolution, Status
from ..store import Tx
from .leases import held
from .transitions import emit, get_row, settle
from .views import public


def cancel_task(tx: Tx, now: int, *, item_id: int) -> Item:
    row = get_row(tx, item_id)
    if row["status"] == Status.PENDING:
        new = settle(tx, now, row, Status.CANCELLED, keep=True)
        emit(tx, now, new, EventType.CANCELLED, ev.SETTLED)
        return public(new)
    if row["status"] == Status.RUNNING:
        if row["cancel_requested"]:
            return public(row)  # asked already: nothing new to record
        asked = tx.item("request_cancel", {"id": item_id, "now": now})
        assert asked is not None, "the item was read in this transaction"
        emit(tx, now, asked, EventType.CANCEL_REQUESTED, ev.CANCEL_REQUESTED)
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


def resolve_task(tx: Tx, now: int, *, item_id: int, outcome: str) -> Item:
    row = get_row(tx, item_id)
    if row["status"] != Status.UNKNOWN:
        raise Conflict(f"item {item_id} is {row['status']}: only unknown items are resolved",
                       data={"item_id": item_id, "status": row["status"]})
    if outcome == Resolution.RETRY:
        new = settle(tx, now, row, Status.PENDING, run_after=now, keep=True)
    else:
        new = settle(tx, now, row, outcome, keep=True)
    emit(tx, now, new, EventType.RESOLVED, ev.SETTLED, outcome=outcome)
    return public(new)
