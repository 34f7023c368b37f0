"""Reads: an item, lists of items and events, whether a token is live, the totals."""

from __future__ import annotations

from ..model import PARENT_KIND, Event, Item, Status
from ..store import Tx
from ..validate import STATUSES
from .leases import lost_ancestor
from .tokens import same_token
from .transitions import get_row
from .views import event_view, public


def get_task(tx: Tx, now: int, *, item_id: int) -> Item:
    return public(get_row(tx, item_id))


def list_tasks(tx: Tx, now: int, *, status: str | None, queue: str | None,
               kind: str | None, limit: int) -> list[Item]:
    rows = tx.items("list_items", {"status": status, "queue": queue, "kind": kind,
                                 "limit": limit or -1})
    return [public(r) for r in rows]


def list_events(tx: Tx, now: int, *, item_id: int | None, since: int,
                limit: int) -> list[Event]:
    params = {"since": since, "limit": limit or -1, "item_id": item_id}
    rows = tx.events("events_since" if item_id is None else "events_of_item", params)
    if item_id is not None and not rows:
        get_row(tx, item_id)  # no events: an item with none newer, or no such item
    return [event_view(r) for r in rows]


def verify(tx: Tx, now: int, *, item_id: int, token: str) -> dict:
    row = get_row(tx, item_id)
    valid = (row["status"] == Status.RUNNING and same_token(row, token)
             and row["lease_expires_at"] is not None and row["lease_expires_at"] > now
             and (row["kind"] not in PARENT_KIND or lost_ancestor(tx, row, now) is None))
    return {"valid": valid, "fence": row["fence"], "status": row["status"]}


def status(tx: Tx, now: int) -> dict:
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({r["status"]: r["n"] for r in tx.all("count_by_status")})
    holding: dict[str, list[int]] = {}
    for r in tx.all("running_by_worker"):
        holding.setdefault(r["worker_id"], []).append(r["id"])
    workers = [{**w, "holding": holding.get(w["worker_id"], [])}
               for w in tx.all("live_workers", {"now": now})]
    expired = [{"id": r["id"], "kind": r["kind"], "queue": r["queue"],
                "worker_id": r["worker_id"], "fence": r["fence"],
                "lease_expires_at": r["lease_expires_at"]}
               for r in tx.all("expired_leases", {"now": now, "limit": 1000})]
    return {"now": now, "counts": counts, "workers": workers, "expired_leases": expired,
            "fence": tx.scalar("max_fence") or 0, "schema_version": tx.schema_version}


def ping(tx: Tx, now: int) -> dict:
    return {"pong": True, "now": now}


def item_counts(tx: Tx) -> list[dict]:
    """How many items each (queue, status, kind) holds: rows of queue, status, kind, n."""
    return tx.all("count_by_queue_status")


def next_due(tx: Tx, now: int, *, kinds: list[str], queues: list[str]) -> int | None:
    """When the next delayed item a waiter could take becomes claimable, if any."""
    dues = [r["due"] for kind in kinds for queue in queues
            if (r := tx.one("next_due", {"kind": kind, "queue": queue, "now": now}))
            and r["due"] is not None]
    return min(dues, default=None)
