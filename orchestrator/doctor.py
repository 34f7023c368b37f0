"""``orch doctor``: is the file sound, is the log untouched, do the rows match the log,
and did every lease keep the rules?"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import events as ev
from . import livestate
from .clock import iso
from .errors import Corrupt
from .model import PARENT_KIND, Effect, EventRow, EventType
from .store import Store, Tx

#: What an item's replayed state starts from before its ``submitted`` event sets the rest.
_UNSET = {f: None for f in ev.STATE_FIELDS} | {"cancel_requested": 0}
_ROW_FIELDS = tuple(f.removesuffix("_sha256") for f in ev.STATE_FIELDS)


def check(store: Store, db: Path | None = None) -> dict:
    """Integrity, the event chain, replay against the rows, and the lease rules; ``db``:
    the file, when a daemon serving it should be checked from outside too.

    A damaged file raises ``Corrupt`` (one line, with the way to recover): nothing
    read from it could be trusted, so the log is not checked.
    """
    try:
        damage = [line for p in store.integrity_problems() for line in p.splitlines()
                  if not line.startswith("*** in database")]
        if damage:
            raise Corrupt(f"database {store.path} is damaged: integrity_check reports "
                          f"{len(damage)} problem(s), the first: {damage[0]}")
        problems = livestate.problems(db) if db is not None else []
        counts = store.read(lambda tx: _check_log(tx, problems, store.chain,
                                                  _global_until(tx, store)))
    except Corrupt as exc:
        raise damaged(exc, store.path) from exc
    return {"ok": not problems, "problems": problems, **counts}


def _global_until(tx: Tx, store: Store) -> int | None:
    """On PostgreSQL: the last event copied from a SQLite file (orch copy), if any."""
    return tx.global_chain_until() if store.chain == "item" else None  # type: ignore[attr-defined]


def damaged(exc: Corrupt, db: Path | str) -> Corrupt:
    """Doctor's report of a damaged file: what SQLite said, and the way to recover."""
    what = str(exc) if exc.__cause__ is None else \
        f"database {db} is damaged or not a database ({exc.__cause__})"
    return Corrupt(f"{what}; restore your last backup (orch backup makes one), or salvage "
                   f"what is readable with the sqlite3 shell: sqlite3 {db} .recover | "
                   "sqlite3 NEW.db, then run orch --db NEW.db doctor")


def _check_log(tx: Tx, problems: list[str], chain: str = "log",
               global_until: int | None = None) -> dict:
    """The log against itself (links, numbers, hashes) and the rows against the log.

    ``chain``: "log" (SQLite), one chain over the whole log, numbered without gaps;
    "item" (PostgreSQL), one chain per item, numbers from a sequence, which skips the
    numbers of rolled-back transactions. Events up to ``global_until`` (copied from a
    SQLite file) keep their chain over the log.
    """
    prev, expected_seq, events = ev.GENESIS, 1, []
    latest: dict[int, int] = {}  # item -> its latest event so far
    heads: dict[int | None, str] = {}  # item -> its latest event's hash (chain "item")
    until = global_until if chain == "item" else None
    for e in tx.events("all_events"):
        if e["item_id"] is not None:
            before = latest.get(e["item_id"], 0)
            if e["item_prev"] is not None and e["item_prev"] != before:
                problems.append(f"event {e['seq']}: links to event {e['item_prev']} as item "
                                f"{e['item_id']}'s previous, which is {before}")
            latest[e["item_id"]] = e["seq"]
        per_item = chain == "item" and (until is None or e["seq"] > until)
        if per_item:
            prev = heads.get(e["item_id"], ev.GENESIS)
        elif e["seq"] != expected_seq:
            problems.append(f"event log: expected event {expected_seq}, found {e['seq']}")
        if e["prev_hash"] != prev or e["hash"] != ev.chain_hash(
                prev, e["seq"], e["at"], e["item_id"], e["type"], e["worker_id"],
                e["fence"], e["detail"]):
            problems.append(f"event log: hash chain broken at event {e['seq']}")
        if e["type"] == EventType.CLAIMED and e["fence"] != e["seq"]:
            problems.append(f"event {e['seq']}: a claim's fence must be its sequence number, "
                            f"found {e['fence']}")
        heads[e["item_id"]] = e["hash"]
        prev, expected_seq = e["hash"], e["seq"] + 1
        events.append(e)
    replayed = ev.replay(events)
    max_fence = 0
    items = tx.items("all_items")
    for row in items:
        max_fence = max(max_fence, row["fence"] or 0)
        want = replayed.pop(row["id"], None)
        if want is None:
            problems.append(f"item {row['id']}: has no events")
            continue
        if row["last_event"] != latest.get(row["id"], 0):
            problems.append(f"item {row['id']}: names event {row['last_event']} as its latest, "
                            f"the log says {latest.get(row['id'], 0)}")
        have = ev.state_of(row, _ROW_FIELDS)
        want = _UNSET | want
        for field in ev.STATE_FIELDS:
            if have[field] != want[field]:
                problems.append(f"item {row['id']}: {field} is {have[field]!r} but the event "
                                f"log says {want[field]!r}")
    for item_id in replayed:
        problems.append(f"item {item_id}: in the event log but missing from items")
    if max_fence >= expected_seq:
        problems.append(f"a fence ({max_fence}) is beyond the last event ({expected_seq - 1})")
    problems += lease_problems(events)
    return {"items": len(items), "events": len(events)}


# --- the lease rules, checked from the log ----------------------------------------------

#: The rules lease_problems checks; each problem it reports names its rule.
WITHIN_LEASE = "holder writes land within the lease, under the current fence"
AFTER_END = "recovery and takeover come after the lease's end"
NO_OVERLAP = "no two live leases on one item"
UNDER_PARENT = "children never outlive their parent's claim"
UNSAFE_NOT_RERUN = "a lost unsafe lease is never run again"

_HOLDER_WRITES = frozenset({EventType.HEARTBEAT, EventType.CHECKPOINT, EventType.RELEASED})
#: Kinds whose lease is valid only under their parent's claim.
_CHILD_KINDS = frozenset(PARENT_KIND)


def lease_problems(events: Iterable[EventRow]) -> list[str]:
    """Check the lease rules in one pass over the log, in sequence order.

    Each event is judged against the state the log gives just before it, at the
    event's own time: what the engine had to check when it wrote the event. One
    problem per offending event, naming the event, the item and the rule.
    """
    check = _LeaseCheck()
    for e in events:
        if e["item_id"] is not None:
            check.see(e)
    return check.finish()


@dataclass(slots=True)
class _Item:
    """One item's lease, as the log has it so far."""

    id: int
    kind: str
    parent: int | None
    unsafe: bool
    fence: int | None = None  # the latest claim's
    live: bool = False  # claimed, and no event has ended that claim since
    expires: int = 0  # the latest claim's lease end
    worker: str | None = None
    ended: tuple[int, int, str] = (0, 0, "")  # (seq, at, type) of what ended the claim
    parent_fence: int | None = None  # the parent's claim this claim was made under
    lost: bool = False  # an unsafe item's lease was lost, and it was not resolved since

    @property
    def name(self) -> str:
        return f"{self.kind} {self.id}"


class _LeaseCheck:
    def __init__(self) -> None:
        self.items: dict[int, _Item] = {}
        self.holding: dict[int, set[int]] = {}  # parent -> children no event has ended
        self.problems: list[tuple[int, str]] = []  # (seq, problem)

    def bad(self, e: EventRow, it: _Item, rule: str, what: str) -> None:
        text = f"event {e['seq']}: {it.name} {e['type']}: {what} [{rule}]"
        self.problems.append((e["seq"], text))

    def see(self, e: EventRow) -> None:
        type_, at, item_id = e["type"], e["at"], e["item_id"]
        if item_id is None:
            return  # not an item's event
        if type_ == EventType.SUBMITTED:
            d = json.loads(e["detail"])
            self.items[item_id] = _Item(item_id, d["kind"], d["parent_id"],
                                        d["effect"] == Effect.UNSAFE)
            return
        it = self.items.get(item_id)
        if it is None:
            return  # an item without its submitted event: replay reports it
        current = it.live and e["fence"] == it.fence
        if type_ in _HOLDER_WRITES:
            if not current:
                self.bad(e, it, WITHIN_LEASE, _not_current(it, e["fence"]))
            elif at >= it.expires:
                self.bad(e, it, WITHIN_LEASE, f"{at - it.expires} ms after its lease "
                         f"(fence {it.fence}) ended at {iso(it.expires)}")
            elif it.kind in _CHILD_KINDS and (gap := self.ancestor_gap(it, at)):
                self.bad(e, it, UNDER_PARENT, gap)
            if current and type_ == EventType.HEARTBEAT:
                it.expires = json.loads(e["detail"])["lease_expires_at"]
            elif current and type_ == EventType.RELEASED:
                self.end(it, e)
        elif type_ == EventType.CLAIMED:
            self.claimed(it, e)
        elif type_ in (EventType.EXPIRED, EventType.TAKEN_OVER):
            if not current:
                self.bad(e, it, AFTER_END, _not_current(it, e["fence"]))
                return
            reason = json.loads(e["detail"])["reason"] if type_ == EventType.EXPIRED else ""
            if reason.startswith("parent_"):
                # Fenced out with its parent, perhaps before its own end: right once the
                # claim it was made under has ended.
                if it.kind in _CHILD_KINDS and not self.ancestor_gap(it, at):
                    self.bad(e, it, AFTER_END, f"{reason} while the claims above it are live")
            elif at < it.expires:
                self.bad(e, it, AFTER_END, f"{it.expires - at} ms before its lease "
                         f"(fence {it.fence}) ends at {iso(it.expires)}")
            it.lost = it.unsafe
            self.end(it, e)
        elif type_ == EventType.RESOLVED:
            it.lost = False

    def claimed(self, it: _Item, e: EventRow) -> None:
        at = e["at"]
        if it.live and at < it.expires:
            self.bad(e, it, NO_OVERLAP, f"fence {e['fence']} while fence {it.fence} holds "
                     f"the lease until {iso(it.expires)}")
        if it.lost:
            self.bad(e, it, UNSAFE_NOT_RERUN, "claimed again after its lease was lost, "
                     "instead of staying unknown")
        if it.live:
            self.end(it, e)  # a claim over an expired lease ends it
        if it.id in self.holding:  # children of its previous claim
            self.outlived(it, self.holding.pop(it.id))
        it.fence, it.live, it.worker = e["fence"], True, e["worker_id"]
        it.expires = json.loads(e["detail"])["lease_expires_at"]
        parent = self.items.get(it.parent) if it.parent is not None else None
        if parent is None:
            return
        it.parent_fence = parent.fence
        if it.kind not in _CHILD_KINDS:
            return
        self.holding.setdefault(parent.id, set()).add(it.id)
        if gap := self.ancestor_gap(it, at):
            self.bad(e, it, UNDER_PARENT, gap)
        elif parent.worker != it.worker:
            self.bad(e, it, UNDER_PARENT, f"claimed by {it.worker!r}, not by the holder of "
                     f"{parent.name} ({parent.worker!r})")

    def end(self, it: _Item, e: EventRow) -> None:
        it.live, it.ended = False, (e["seq"], e["at"], e["type"])
        if it.parent is not None and it.parent in self.holding:
            self.holding[it.parent].discard(it.id)

    def ancestor_gap(self, it: _Item, at: int) -> str | None:
        """Why the claims ``it`` was made under are not all live at ``at`` (None: they are)."""
        node = it
        while node.parent is not None:
            p = self.items.get(node.parent)
            if p is None:
                return None  # a parent without events: replay reports it
            if node.parent_fence is None:
                return f"{p.name} held no claim when {node.name} was claimed"
            if p.fence != node.parent_fence:
                return (f"{p.name}'s claim (fence {node.parent_fence}) that {node.name} was "
                        f"claimed under was replaced by fence {p.fence}")
            if not p.live:
                return (f"{p.name}'s claim (fence {p.fence}) ended at event {p.ended[0]} "
                        f"({p.ended[2]})")
            if at >= p.expires:
                return (f"{p.name}'s lease (fence {p.fence}) ended at {iso(p.expires)}, "
                        f"{at - p.expires} ms before")
            node = p
        return None

    def outlived(self, parent: _Item, children: set[int]) -> None:
        """Children whose lease went on past the end of the parent's claim they were under."""
        if parent.fence is None:
            return  # never claimed: its children were reported when they were claimed
        seq, at, type_ = parent.ended
        end = min(at, parent.expires)
        for child in sorted(children):
            c = self.items[child]
            # (a child claimed after the end was reported when it was claimed)
            if c.live and c.parent_fence == parent.fence and c.fence is not None \
                    and c.fence < seq and c.expires > end:
                self.problems.append((seq, (
                    f"event {seq}: {parent.name} {type_}: its claim (fence {parent.fence}) "
                    f"ended while {c.name} still held a lease under it until "
                    f"{iso(c.expires)} [{UNDER_PARENT}]")))

    def finish(self) -> list[str]:
        for parent_id, children in self.holding.items():
            parent = self.items[parent_id]
            if not parent.live:
                self.outlived(parent, children)
        return [p for _, p in sorted(self.problems, key=lambda p: p[0])]


def _not_current(it: _Item, fence: int | None) -> str:
    if it.fence is None:
        return "it was never claimed"
    if fence != it.fence:
        return f"under fence {fence}, but its current claim is fence {it.fence}"
    return f"its claim (fence {it.fence}) ended at event {it.ended[0]} ({it.ended[2]})"
