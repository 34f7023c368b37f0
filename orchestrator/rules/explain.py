"""``orch why ID``: one or two plain sentences on why an item is where it is.

Every fact in the answer is read from the item's events (who, when, which fence, what
outcome or reason), the log ``orch doctor`` replays, never guessed from the row: a
resolve is told as a resolve, and a recovery is told apart from the lease's end.
"""

from __future__ import annotations

from typing import Any

from .. import events as ev
from ..clock import iso
from ..model import PARENT_KIND, Event, EventType, Kind, Outcome, Reason, Status
from ..store import Tx
from ..validate import RESOLUTIONS
from .leases import lost_ancestor
from .transitions import get_row
from .views import event_view

#: Event types that set an item's status: the last of them is why it is where it is.
SETS_STATUS = (EventType.SUBMITTED, EventType.CLAIMED, EventType.RELEASED, EventType.EXPIRED,
               EventType.CANCELLED, EventType.RESOLVED, EventType.REQUEUED)

FENCED_OUT = {  # expired.reason -> why the holder was fenced out before its lease ended
    Reason.PARENT_LEASE_LOST: "its parent's lease was lost",
    Reason.PARENT_TAKEN_OVER: "its parent was taken over by another worker",
    Reason.PARENT_RELEASED: "its parent was released",
}


def explain_task(tx: Tx, now: int, *, item_id: int) -> dict[str, Any]:
    row = get_row(tx, item_id)  # an unknown id is NOT_FOUND
    rows = tx.events("events_of_item", {"item_id": item_id, "since": 0, "limit": -1})
    state = ev.replay(rows)[item_id]
    events = [event_view(r) for r in rows]
    text = explain(events, state, now, item_id)
    if state["status"] == Status.RUNNING and row["kind"] in PARENT_KIND:
        lost = lost_ancestor(tx, row, now)
        if lost is not None:  # the child's own lease may look live: its holder is fenced
            ancestor, why = lost
            text += (f"; but the lease of its {ancestor['kind']} {ancestor['id']} is gone "
                     f"({why}), so its holder's writes are refused")
    return {"id": item_id, "kind": state["kind"], "status": state["status"], "text": text}


def explain(events: list[Event], state: dict[str, Any], now: int, item_id: int) -> str:
    """The answer for an item with these events (oldest first), ``state`` their replay."""
    i = max(n for n, e in enumerate(events) if e["type"] in SETS_STATUS)
    cause, before = events[i], events[:i]
    st = state["status"]
    what = "tool execution" if state["kind"] == Kind.TOOL_EXECUTION else state["kind"]
    if st == Status.RUNNING:
        return running(events[i:], before, state, now)
    said = clause(cause, before, state)
    if cause["type"] == EventType.RESOLVED:
        return f"{st}: {said}"
    outcome = cause["detail"].get("outcome")
    if st == Status.PENDING:
        if cause["type"] == EventType.REQUEUED:
            return (f"pending: {said}; next is attempt {_attempt(state['attempts'] + 1, state)}"
                    f", claimable {_in(state['run_after'], now)}")
        if state["attempts"] == 0:
            return f"pending: {said}, not claimed yet; claimable {_in(state['run_after'], now)}"
        after = ("failure" if outcome == Outcome.FAILED
                 else "a requeue" if outcome == Outcome.REQUEUE else "a lost lease")
        return (f"pending: retry {_attempt(state['attempts'] + 1, state)} after {after}, "
                f"claimable {_in(state['run_after'], now)}; {said}")
    if st == Status.SUCCEEDED:
        return f"succeeded: after {state['attempts']} attempt(s); {said}"
    if st == Status.FAILED:
        return f"failed: final, as the release asked for no retry; {said}"
    if st == Status.DEAD:
        return f"dead: all {state['attempts']} of {state['max_attempts']} attempts used; {said}"
    if st == Status.CANCELLED:
        if cause["type"] == EventType.CANCELLED:
            ran = (f"after {state['attempts']} attempt(s)" if state["attempts"]
                   else "before it ran")
            return f"cancelled: {ran}; {said}"
        if outcome == Outcome.CANCELLED:
            return f"cancelled: by its holder; {said}"
        asked = _last(before, EventType.CANCEL_REQUESTED)
        when = f" at {iso(asked['at'])}" if asked else ""
        return f"cancelled: not retried, as a cancel was requested{when}; {said}"
    # unknown
    return (f"unknown: the holder of an unsafe {what} lost its lease, so it may or may not have "
            f"taken effect; {said}. Resolve with orch resolve {item_id} --outcome "
            + "|".join(RESOLUTIONS))


def running(since_claim: list[Event], before: list[Event], state: dict[str, Any], now: int) -> str:
    """A live or lapsed lease: the claim, then what its holder did since."""
    text = f"running: {clause(since_claim[0], before, state)}"
    if before and before[-1]["type"] == EventType.TAKEN_OVER:
        text += f", after {clause(before[-1], before[:-1], state)}"
    ends = state["lease_expires_at"]
    if ends > now:
        text += f"; lease ends in {_secs(ends - now)}"
    else:
        text += (f"; its lease ended {_secs(now - ends)} ago, at {iso(ends)}: the next "
                 "recovery (orch recover, or the daemon) moves it on")
    for type_ in (EventType.HEARTBEAT, EventType.CHECKPOINT, EventType.CANCEL_REQUESTED):
        e = _last(since_claim, type_) or (_last(before, type_)
                                          if type_ == EventType.CANCEL_REQUESTED
                                          and state["cancel_requested"] else None)
        if e is not None:
            text += f"; {clause(e, [], state)}"
    return text


def clause(e: Event, before: list[Event], state: dict[str, Any]) -> str:
    """What one event says, from its own fields (``before``: the item's earlier events)."""
    d, at = e["detail"], iso(e["at"])
    holder = _holder(e)
    match e["type"]:
        case EventType.SUBMITTED:
            later = (f" to be claimable from {iso(d['run_after'])}"
                     if d["run_after"] > e["at"] else "")
            return f"submitted at {at}{later}"
        case EventType.CLAIMED:
            return f"held by {holder} since {at} (attempt {_attempt(d['attempts'], state)})"
        case EventType.HEARTBEAT:
            return f"last heartbeat at {at}"
        case EventType.CHECKPOINT:
            return f"last checkpoint at {at} ({d['size']} bytes)"
        case EventType.CANCEL_REQUESTED:
            return (f"a cancel was requested{_by(d)} at {at}; the holder sees it on its next "
                    "heartbeat")
        case EventType.CANCELLED:
            return f"cancelled {_by(d, 'with orch cancel')} at {at}, while pending"
        case EventType.RELEASED:
            error = f" ({d['error']})" if d.get("error") else ""
            return f"{holder} released it as {d['outcome']} at {at}{error}"
        case EventType.TAKEN_OVER:
            return (f"{d['by']} took over the expired lease of {d['previous_worker']} "
                    f"(fence {d['previous_fence']}) at {at}")
        case EventType.RESOLVED:
            return (f"resolved as {d['outcome']} {_by(d, 'with orch resolve')} at {at}, after "
                    f"the lease of {holder} was lost")
        case EventType.REQUEUED:
            return (f"requeued {_by(d, 'with orch retry')} at {at}, after it was "
                    f"{d['previous_status']}")
        case EventType.EXPIRED:
            if d["reason"] != Reason.LEASE_EXPIRED:
                return (f"{holder} was fenced out at {at} because "
                        f"{FENCED_OUT.get(d['reason'], d['reason'])}")
            lease = _last(before, EventType.CLAIMED, EventType.HEARTBEAT)
            ended = f" ended at {iso(lease['detail']['lease_expires_at'])} and" if lease else ""
            return f"the lease of {holder}{ended} was recovered at {at}"
    return f"{e['type']} at {at}"


def _by(d: dict[str, Any], otherwise: str = "") -> str:
    """Who acted, as an action's event recorded it (``by``), else how."""
    if d.get("by"):
        return f"by {d['by']}" if otherwise else f" by {d['by']}"
    return otherwise


def _last(events: list[Event], *types: str) -> Event | None:
    return next((e for e in reversed(events) if e["type"] in types), None)


def _holder(e: Event) -> str:
    return f"{e['worker_id']} (fence {e['fence']})"


def _attempt(n: int, state: dict[str, Any]) -> str:
    return f"{n} of {state['max_attempts']}" if state["max_attempts"] else f"{n} (no limit)"


def _secs(ms: int) -> str:
    return f"{ms / 1000:.1f}".removesuffix(".0") + " s"


def _in(ms: int, now: int) -> str:
    return "now" if ms <= now else f"in {_secs(ms - now)}"
