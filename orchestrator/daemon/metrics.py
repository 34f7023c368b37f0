"""The daemon's Prometheus metrics: what it counts as it answers, and what it reads when
scraped.

Counting happens where the daemon already holds each answer (one call per request, a
few dictionary increments, in the event loop's thread: no lock), and where the writer
has just committed a group. The embedded API counts nothing. Item counts are not kept
up to date on the write path at all: a scrape reads them, with one GROUP BY on a read
connection, never the writer's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..errors import LeaseLost, OrchError
from ..registry import BY_NAME
from ..rules import item_counts
from ..store import Tx
from ..validate import STATUSES

#: A request that names no method of ours (or is no request at all).
UNKNOWN_METHOD = "unknown"

# Groups are capped at writer.MAX_GROUP (512) requests.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# A commit with synchronous=FULL waits for an fsync: about a millisecond on an SSD, tens
# on a disk or a busy machine; a group waiting for another process's lock takes longer.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0)

Read = Callable[[Callable[[Tx], Any]], Any]


class Metrics:
    """The metrics of one daemon, in a registry of their own (not prometheus_client's
    global one, so two daemons in one process, or a test, never share a series).

    ``read(fn)`` runs ``fn(tx)`` on a read connection of the calling thread;
    ``parked()`` and ``connections()`` say how many claims wait and clients are
    connected now.
    """

    def __init__(self, read: Read, parked: Callable[[], int],
                 connections: Callable[[], int]):
        self.read = read
        self.parked = parked
        self.connections = connections
        # Plain counts: incremented only in the event loop's thread, copied at a scrape.
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (op, result)
        self.claims: defaultdict[tuple[str, str], int] = defaultdict(int)  # (queue, kind)
        self.releases: defaultdict[str, int] = defaultdict(int)  # outcome
        self.expirations: defaultdict[str, int] = defaultdict(int)  # new status
        self.refusals: defaultdict[str, int] = defaultdict(int)  # op
        # Observed once per commit, by one thread at a time: the loop's, or the writer's
        # waiting thread while the loop commits nothing.
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.commit_seconds = _Histogram(COMMIT_BUCKETS)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    # -- counting (the event loop's thread) --

    def answered(self, op: str, kwargs: dict, ok: bool, value: Any) -> None:
        """One request of ``op`` was answered: ``value`` is its result, or its error."""
        if not ok:
            reason = value.reason
            self.requests[op, reason] += 1
            if reason == LeaseLost.reason:
                self.refusals[op] += 1
            return
        self.requests[op, "ok"] += 1
        if op == "claim_task":
            if value is not None:
                self.claims[value["queue"], value["kind"]] += 1
        elif op == "release_task":
            self.releases[kwargs["outcome"]] += 1
        elif op == "release_and_claim":
            self.releases[kwargs["outcome"]] += 1
            nxt = value["next"]
            if nxt is not None:
                self.claims[nxt["queue"], nxt["kind"]] += 1
        elif op == "stale_recovery":
            self.recovered(value)
        elif op == "heartbeat" and "leases" in value:
            # Several leases in one answer, each refused on its own.
            lost = sum(1 for lease in value["leases"]
                       if lease.get("error", {}).get("reason") == LeaseLost.reason)
            if lost:
                self.refusals[op] += lost

    def refused(self, op: str, reply: dict | None) -> None:
        """A request answered with ``reply``, an error, without being run (``op`` empty
        when it names no method of ours)."""
        reason = (reply or {}).get("error", {}).get("data", {}).get("reason", OrchError.reason)
        self.requests[op, reason] += 1

    def recovered(self, value: dict) -> None:
        """A recovery pass (the daemon's own, or one asked for) returned ``value``."""
        if not value["dry_run"]:
            for item in value["recovered"]:
                self.expirations[item["status"]] += 1

    def committed(self, requests: int, seconds: float) -> None:
        self.batch_size.observe(requests)
        self.commit_seconds.observe(seconds)

    # -- scraping (any thread) --

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and that format's content type.

        It reads the database on the calling thread (one GROUP BY over the items): from
        the event loop, call it in a thread, such as the daemon's reader pool.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector(Collector):
    """What a scrape reads or copies: the item counts, the request counts kept by
    ``Metrics``, and the gauges of the daemon's state."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        items = self._items()
        if items is not None:
            yield items
        # Each dict copied in one step: the loop's thread may add a key during a scrape.
        yield _counter(
            "orch_requests", "Requests answered, by JSON-RPC method and result: ok, or the "
            "error's reason (lease_lost, not_found, conflict, invalid, ...).",
            ("method", "result"),
            (((_method(op), result), n) for (op, result), n in list(m.requests.items())))
        yield _counter(
            "orch_claims", "Items claimed (claimTask, and releaseAndClaim's next claim), by "
            "queue and kind.", ("queue", "kind"), list(m.claims.items()))
        yield _counter(
            "orch_releases", "Leases released by their holder, by the outcome asked for "
            "(succeeded, failed, cancelled, requeue).", ("outcome",),
            (((o,), n) for o, n in list(m.releases.items())))
        yield _counter(
            "orch_expirations", "Items whose lease expired, moved on by recovery (the "
            "daemon's own or orch recover; running children fenced with their session or "
            "goal included), by the status they went to.", ("status",),
            (((s,), n) for s, n in list(m.expirations.items())))
        yield _counter(
            "orch_fencing_refusals", "Requests refused because their token was not the "
            "item's live claim (LEASE_LOST), by JSON-RPC method; a heartbeat of several "
            "leases counts each lease refused.", ("method",),
            (((_method(op),), n) for op, n in list(m.refusals.items())))
        parked = GaugeMetricFamily(
            "orch_parked_waiters", "Claims parked in the daemon (claimTask with wait) until "
            "an item they could take appears.")
        parked.add_metric([], m.parked())
        yield parked
        conns = GaugeMetricFamily(
            "orch_open_connections", "Client connections open to the daemon's socket.")
        conns.add_metric([], m.connections())
        yield conns
        yield m.batch_size.family(
            "orch_group_commit_batch_size",
            "Write requests committed together in one transaction by the daemon's group "
            "commit.")
        yield m.commit_seconds.family(
            "orch_commit_seconds",
            "Seconds the daemon's writer spent on one group: from BEGIN through running "
            "its requests to the end of COMMIT.")

    def _items(self) -> GaugeMetricFamily | None:
        try:
            rows = self.m.read(item_counts)
        except OrchError as exc:  # the other metrics still say something: serve them
            logger.warning("metrics: counting items failed: {}", exc)
            return None
        family = GaugeMetricFamily(
            "orch_items", "Items by queue, status and kind, counted when scraped.",
            labels=["queue", "status", "kind"])
        counts = {(r["queue"], r["status"], r["kind"]): r["n"] for r in rows}
        # Every status of each queue and kind that has items, zero included, so a series
        # drops to 0 rather than vanishing when its last item moves on.
        for queue, kind in sorted({(q, k) for q, _, k in counts}):
            for status in STATUSES:
                family.add_metric([queue, status, kind], counts.get((queue, status, kind), 0))
        return family


class _Histogram:
    """Counts per bucket and a sum, turned into a histogram when scraped (cheaper than
    prometheus_client's, which takes a lock per observation, and without its
    ``_created`` series)."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: over every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sum
        buckets: list[tuple[str, float]] = []
        below = 0
        for bound, n in zip([*self.bounds, float("inf")], counts, strict=True):
            below += n
            buckets.append((floatToGoString(bound), below))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _counter(name: str, doc: str, labels: tuple[str, ...],
             counts: Iterable[tuple[tuple[str, ...], int]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in counts:
        family.add_metric(list(values), n)
    return family


def _method(op: str) -> str:
    record = BY_NAME.get(op)
    return record.wire if record is not None else UNKNOWN_METHOD
