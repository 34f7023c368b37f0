"""What the web view's overview shows at a glance: items by queue and status, the live
leases of each worker, and the last hour's claims, releases and failures per minute.

Goals and tool executions live in a queue of their parent's each (``session:12``), so
they are counted by kind and status instead, not as queues.

The hour's activity is read from the event log. A caller that polls passes ``since``,
the ``last_seq`` of its previous answer, and gets only the events after it, so a page
left open costs what the log grew by, not the hour's length of it. Counting the items
is a pass over all of them: a caller that polls asks for it less often (``counts``).
"""

from __future__ import annotations

from typing import Any

from ..model import PARENT_KIND
from ..store import Tx
from ..validate import STATUSES
from .reads import item_counts

BUCKET_MS = 60_000
BUCKETS = 60  # one hour, the current minute last
MAX_LEASES = 1000

Counts = dict[str, int]


def overview(tx: Tx, now: int, *, since: int, counts: bool = True) -> dict[str, Any]:
    # First: on PostgreSQL the log's head is its horizon, read before the snapshot.
    head = tx.one("log_head", {})
    last_seq = head["seq"] if head else 0
    by_status, queues, children = count(tx) if counts else (None, None, None)
    workers: dict[str, list[dict[str, Any]]] = {}
    for r in tx.all("running_leases", {"limit": MAX_LEASES}):
        workers.setdefault(r["worker_id"], []).append(
            {**r, "cancel_requested": bool(r["cancel_requested"])})
    return {"now": now, "counts": by_status, "queues": queues, "children": children,
            "workers": [{"worker_id": w, "leases": leases} for w, leases in workers.items()],
            "last_seq": last_seq, "activity": activity(tx, now, since, last_seq)}


def count(tx: Tx) -> tuple[Counts, dict[str, Counts], dict[str, Counts]]:
    """Items by status; by queue and status; goals and tool executions by status. One
    pass over every item: what the overview costs most."""
    totals = dict.fromkeys(STATUSES, 0)
    queues: dict[str, Counts] = {}
    children: dict[str, Counts] = {k: dict.fromkeys(STATUSES, 0) for k in PARENT_KIND}
    for r in item_counts(tx):
        by_status = children[r["kind"]] if r["kind"] in PARENT_KIND else \
            queues.setdefault(r["queue"], dict.fromkeys(STATUSES, 0))
        by_status[r["status"]] += r["n"]
        totals[r["status"]] += r["n"]
    return totals, dict(sorted(queues.items())), children


def activity(tx: Tx, now: int, since: int, last_seq: int) -> dict[str, Any]:
    """Claims, releases and failures (failed releases and lost leases) per minute over
    the last hour, counting only events after sequence number ``since``."""
    start = (now // BUCKET_MS - (BUCKETS - 1)) * BUCKET_MS
    first = _first_at(tx, start, max(since + 1, 1), last_seq)
    rows = tx.all("activity", {"first": first, "last": last_seq, "start": start,
                               "bucket": BUCKET_MS}) if first <= last_seq else []
    buckets = [{"at": r["slot"], "claims": r["claims"], "releases": r["releases"],
                "failures": r["failures"]} for r in rows]
    return {"start": start, "bucket_ms": BUCKET_MS, "since": since, "buckets": buckets}


def _first_at(tx: Tx, at: int, lo: int, hi: int) -> int:
    """The first sequence number in [lo, hi] of an event at or after ``at`` (hi + 1 when
    none), by bisection: events are appended in time order, and the log has no index on
    time (one would cost a page write at every commit)."""
    hi += 1
    while lo < hi:
        mid = (lo + hi) // 2
        r = tx.one("event_at_or_after", {"seq": mid})
        if r is None or r["at"] >= at:
            hi = mid
        else:
            lo = r["seq"] + 1
    return lo
