"""The event log's shape: what each event records, its hash chain, and replay.

Every event's ``detail`` carries the item fields its transition set, read back from
the row the transition wrote (JSON values as their SHA-256). Replaying the details in
order rebuilds each item's state, which is what ``orch doctor`` compares with the rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .model import JSON_COLUMNS, EventRow
from .store import GENESIS
from .validate import dump_json

__all__ = ["GENESIS"]

#: Every item field an event can set, and so every field replay checks.
STATE_FIELDS = (
    "kind", "queue", "parent_id", "key", "priority", "status", "attempts", "max_attempts",
    "run_after", "effect", "worker_id", "fence", "lease_ttl_ms", "lease_expires_at",
    "heartbeat_at", "cancel_requested", "error", *(f"{name}_sha256" for name in JSON_COLUMNS),
)

# The fields each kind of transition sets.
SUBMITTED = ("kind", "queue", "parent_id", "key", "priority", "status", "attempts",
             "max_attempts", "run_after", "effect", "payload")
CLAIMED = ("status", "attempts", "worker_id", "fence", "lease_ttl_ms", "lease_expires_at",
           "heartbeat_at", "cancel_requested")
HEARTBEAT = ("lease_expires_at", "heartbeat_at")
CHECKPOINT = ("checkpoint",)
SETTLED = ("status", "run_after", "result", "error", "lease_expires_at", "heartbeat_at")
CANCEL_REQUESTED = ("cancel_requested",)


def digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def state_of(row: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The part of an item row that ``fields`` names, as an event records it."""
    out: dict[str, Any] = {}
    for f in fields:
        if f in JSON_COLUMNS:  # events record their digest, never the value
            out[f"{f}_sha256"] = digest(row[f])
        else:
            out[f] = row[f]
    return out


def chain_hash(prev_hash: str, seq: int, at: int, item_id: int | None, type_: str,
               worker_id: str | None, fence: int | None, detail: str) -> str:
    # Fields joined by the unit separator, which none of them can contain unescaped
    # (worker ids refuse control characters, detail is JSON).
    material = f"{prev_hash}\x1f{seq}\x1f{at}\x1f{item_id}\x1f{type_}\x1f{worker_id}\x1f{fence}" \
        f"\x1f{detail}"
    return hashlib.sha256(material.encode()).hexdigest()


def next_seq(tx) -> int:
    """The sequence number the next event appended in this transaction will get."""
    return tx.next_seq()


def chained(tx, at: int, item_id: int | None, type_: str, worker_id: str | None,
            fence: int | None, detail: dict[str, Any] | str) -> dict[str, Any]:
    """The next event's row, linked into the chain (the caller inserts it).

    ``detail`` is a dict, or its compact JSON text already made.
    """
    seq, prev = tx.link(item_id)  # the store's chain: over the log, or over the item
    text = detail if isinstance(detail, str) else dump_json(detail)
    h = chain_hash(prev, seq, at, item_id, type_, worker_id, fence, text)
    row = {"seq": seq, "at": at, "item_id": item_id, "type": type_, "worker_id": worker_id,
           "fence": fence, "detail": text, "prev_hash": prev, "hash": h}
    tx.linked(item_id, seq, h)
    return row


def append(tx, at: int, item_id: int | None, type_: str, worker_id: str | None,
           fence: int | None, detail: dict[str, Any]) -> int:
    """Append one event in the caller's transaction; returns its sequence number."""
    row = chained(tx, at, item_id, type_, worker_id, fence, detail)
    tx.run("insert_event", row)
    tx.run("link_event", row)
    return row["seq"]


def replay(events: Iterable[EventRow]) -> dict[int, dict[str, Any]]:
    """Fold events (in sequence order) into the state each item should have now."""
    states: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev["item_id"] is None:
            continue
        detail = json.loads(ev["detail"])
        state = states.setdefault(ev["item_id"], {})
        for k, v in detail.items():
            if k in STATE_FIELDS:
                state[k] = v
    return states
