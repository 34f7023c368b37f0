"""``orch why ID``: one or two plain sentences on why an item is where it is."""

from __future__ import annotations

import json

from .rules import PARENT_KIND, get_row, iso, lost_ancestor
from .store import Tx


def _in(ms: int, now: int) -> str:
    s = (ms - now) / 1000
    return f"in {s:.0f} s" if s >= 0.5 else "now"


def _ago(ms: int, now: int) -> str:
    return f"{(now - ms) / 1000:.0f} s ago"


#: How an "expired" event's lease ended, by its reason.
_ENDED = {"parent_lease_lost": "ended with its parent's lease",
          "parent_taken_over": "ended when its parent was taken over",
          "parent_released": "ended when its parent was released"}


def _ended(detail: dict) -> str:
    return _ENDED.get(detail.get("reason"), "expired")


def _of(row: dict) -> str:
    return str(row["max_attempts"]) if row["max_attempts"] else "unlimited"


def explain_task(tx: Tx, now: int, *, item_id: int) -> dict:
    row = get_row(tx, item_id)
    events = tx.all("events_of_item", {"item_id": item_id, "since": 0, "limit": -1})
    last = events[-1] if events else None
    detail = json.loads(last["detail"]) if last else {}
    kind, st = row["kind"], row["status"]
    what = "tool execution" if kind == "tool_execution" else kind
    error = f" ({row['error']})" if row["error"] else ""

    if st == "pending":
        when = (f"claimable {_in(row['run_after'], now)}" if row["run_after"] > now
                else "claimable now")
        if row["attempts"] == 0:
            text = f"pending: submitted {iso(row['created_at'])}, not claimed yet; {when}"
        elif last and last["type"] == "expired":
            text = (f"pending: the lease of {last['worker_id']} (fence {last['fence']}) "
                    f"{_ended(detail)} at {iso(last['at'])}; retry {row['attempts'] + 1} of "
                    f"{_of(row)}, {when}")
        elif last and last["type"] == "resolved":
            text = f"pending: resolved for a retry at {iso(last['at'])}; {when}"
        elif last and detail.get("outcome") == "requeue":
            text = f"pending: given back by {last['worker_id']} at {iso(last['at'])}; {when}"
        else:
            text = (f"pending: retry {row['attempts'] + 1} of {_of(row)} after failure"
                    f"{error}, {when}")
    elif st == "running":
        lost = lost_ancestor(tx, row, now) if row["kind"] in PARENT_KIND else None
        if lost is not None and row["lease_expires_at"] > now:
            ancestor, why = lost
            text = (f"running: held by {row['worker_id']}, but the lease of its "
                    f"{ancestor['kind']} {ancestor['id']} is gone ({why}), so its holder's "
                    "writes are refused; recovery or the parent's next holder moves it on")
        elif row["lease_expires_at"] > now:
            text = (f"running: held by {row['worker_id']} (fence {row['fence']}, attempt "
                    f"{row['attempts']}) since {iso(_claimed_at(events, row))}, lease ends "
                    f"{_in(row['lease_expires_at'], now)}")
        else:
            text = (f"running: held by {row['worker_id']}, but the lease expired "
                    f"{_ago(row['lease_expires_at'], now)}; the next recovery "
                    "(orch recover, or the daemon) moves it on")
        if row["cancel_requested"]:
            text += "; a cancel was requested, the holder sees it on its next heartbeat"
    elif st == "succeeded":
        text = (f"succeeded: released by {row['worker_id']} at {iso(row['updated_at'])} "
                f"after {row['attempts']} attempt(s)")
    elif st == "failed":
        text = (f"failed: {row['worker_id']} released it as failed without retry at "
                f"{iso(row['updated_at'])}{error}")
    elif st == "dead":
        if last and last["type"] == "expired":
            text = (f"dead: the lease of {last['worker_id']} {_ended(detail)} at "
                    f"{iso(last['at'])} "
                    f"and all {row['attempts']} attempts were used{error}")
        else:
            text = f"dead: all {row['attempts']} attempts failed; last error{error or ': none'}"
    elif st == "cancelled":
        how = ("before it ran" if row["attempts"] == 0 else
               "by its holder after a cancel request" if row["cancel_requested"] else
               "by its holder")
        text = f"cancelled: at {iso(row['updated_at'])}, {how}"
    else:  # unknown
        reason = (detail.get("reason") or "").replace("_", " ")
        text = (f"unknown: holder {row['worker_id']} of an unsafe {what} lost its lease at "
                f"{iso(last['at'] if last else row['updated_at'])}"
                f"{f' ({reason})' if reason else ''}; it may or may not have taken effect. "
                f"Resolve with orch resolve {item_id} --outcome succeeded|failed|retry")
    return {"id": item_id, "kind": kind, "status": st, "text": text}


def _claimed_at(events: list[dict], row: dict) -> int:
    for e in reversed(events):
        if e["type"] == "claimed":
            return e["at"]
    return row["updated_at"]
