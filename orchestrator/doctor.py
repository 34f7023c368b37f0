"""``orch doctor``: is the file sound, is the log untouched, do the rows match the log?"""

from __future__ import annotations

from pathlib import Path

from . import events as ev
from . import livestate
from .errors import Corrupt
from .store import Store, Tx

#: What an item's replayed state starts from before its ``submitted`` event sets the rest.
_UNSET = {f: None for f in ev.STATE_FIELDS} | {"cancel_requested": 0}
_ROW_FIELDS = tuple(f.removesuffix("_sha256") for f in ev.STATE_FIELDS)


def check(store: Store, db: Path | None = None) -> dict:
    """Integrity, the event chain, and replay against the rows; ``db``: the file, when a
    daemon serving it should be checked from outside too.

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
        counts = store.read(lambda tx: _check_log(tx, problems))
    except Corrupt as exc:
        raise damaged(exc, store.path) from exc
    return {"ok": not problems, "problems": problems, **counts}


def damaged(exc: Corrupt, db: Path) -> Corrupt:
    """Doctor's report of a damaged file: what SQLite said, and the way to recover."""
    what = str(exc) if exc.__cause__ is None else \
        f"database {db} is damaged or not a database ({exc.__cause__})"
    return Corrupt(f"{what}; restore your last backup (orch backup makes one), or salvage "
                   f"what is readable with the sqlite3 shell: sqlite3 {db} .recover | "
                   "sqlite3 NEW.db, then run orch --db NEW.db doctor")


def _check_log(tx: Tx, problems: list[str]) -> dict:
    prev, expected_seq, events = ev.GENESIS, 1, []
    latest: dict[int, int] = {}  # item -> its latest event so far
    for e in tx.all("all_events"):
        if e["item_id"] is not None:
            before = latest.get(e["item_id"], 0)
            if e["item_prev"] is not None and e["item_prev"] != before:
                problems.append(f"event {e['seq']}: links to event {e['item_prev']} as item "
                                f"{e['item_id']}'s previous, which is {before}")
            latest[e["item_id"]] = e["seq"]
        if e["seq"] != expected_seq:
            problems.append(f"event log: expected event {expected_seq}, found {e['seq']}")
        if e["prev_hash"] != prev or e["hash"] != ev.chain_hash(
                prev, e["seq"], e["at"], e["item_id"], e["type"], e["worker_id"],
                e["fence"], e["detail"]):
            problems.append(f"event log: hash chain broken at event {e['seq']}")
        if e["type"] == "claimed" and e["fence"] != e["seq"]:
            problems.append(f"event {e['seq']}: a claim's fence must be its sequence number, "
                            f"found {e['fence']}")
        prev, expected_seq = e["hash"], e["seq"] + 1
        events.append(e)
    replayed = ev.replay(events)
    max_fence = 0
    items = tx.all("all_items")
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
    return {"items": len(items), "events": len(events)}
