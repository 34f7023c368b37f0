"""``orch copy --to URL``: a SQLite file's items, workers and events moved into an empty
PostgreSQL database, then checked there with doctor.

The file is read inside one read transaction, so a daemon may go on writing to it: the
copy is the file as of that moment. The database is written in one transaction, so it
holds all of the copy or none of it. Everything keeps its number: item ids, fences,
event numbers, hashes and prev_hash. On SQLite each event chains over the previous one
of the whole log; orch_meta's ``chain_global_until`` names the last copied event, and
doctor checks the events up to it as that one chain. After it each event chains over
its item's previous event, so an item's first event written on PostgreSQL chains over
its last copied one (found through ``items.last_event``, copied too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import defaults, doctor, paths
from .errors import Conflict
from .model import Status
from .postgres import PgTx, PostgresStore, masked, schema_tables
from .store import SQLiteStore, Tx

#: Rows read from the file and written to the database at a time: the file's events need
#: not fit in memory at once.
PAGE = 2000

#: What ``count_items_events`` answers: compared between the file and the copy.
COUNTS = ("items", "events", "workers", "max_fence", "last_seq")


def copy(source: Path, url: str, *, busy_budget_s: float = defaults.BUSY_BUDGET_S) -> dict:
    """Copy the SQLite database ``source`` into the empty PostgreSQL database ``url``.

    Refuses (``Conflict``, nothing written) a schema holding anything but orch's
    tables, or orch's tables with any item or event. Returns what was copied, what the
    database holds after the commit, and doctor's report on it.
    """
    src = SQLiteStore(source, create=False, busy_budget_s=busy_budget_s)
    try:
        to = masked(url)
        tables = schema_tables(url)
        if tables and "orch_migrations" not in tables:
            raise Conflict(f"{to} holds tables that are not orch's ({', '.join(tables[:5])}"
                           f"{', ...' if len(tables) > 5 else ''}); orch copy fills only an "
                           "empty database or schema, and changed nothing")
        dst = PostgresStore(url, create=True, busy_budget_s=busy_budget_s)
        try:
            copied = src.read(lambda file_tx: dst.write(lambda pg_tx: _copy(file_tx, pg_tx)))
            there = dst.read(lambda tx: tx.one("count_items_events"))
            report = doctor.check(dst)
        finally:
            dst.close()
    finally:
        src.close()
    assert there is not None
    there = {k: there[k] for k in COUNTS}
    same = there == copied
    return {"from": paths.shown(Path(source)), "to": to, "copied": copied, "target": there,
            "same": same, "doctor": report, "ok": same and report["ok"]}


def _copy(file_tx: Tx, pg_tx: PgTx) -> dict[str, int]:
    """The copy, inside the file's read transaction and the database's write transaction."""
    pg_tx.run("lock_for_copy")
    held = pg_tx.one("count_items_events")
    assert held is not None
    if held["items"] or held["events"]:
        raise Conflict(f"{pg_tx.store.path} already holds {held['items']} item(s) and "
                       f"{held['events']} event(s); orch copy fills only an empty database "
                       "or schema, and changed nothing")
    counts = file_tx.one("count_items_events")
    assert counts is not None
    pg_tx.run_many("copy_worker", file_tx.all("all_workers"))

    last_id = 0
    while page := file_tx.all("items_after", {"after": last_id, "limit": PAGE}):
        pg_tx.run_many("copy_item", page)
        last_id = page[-1]["id"]
        if any(row["status"] == Status.PENDING for row in page):
            pg_tx.notify = True  # claimable now: wake claims parked on any machine

    last_seq = 0
    latest: dict[int, int] = {}  # item -> its latest event so far
    while page := file_tx.all("events_since", {"since": last_seq, "limit": PAGE}):
        pg_tx.run_many("copy_event", [_linked(e, latest) for e in page])
        last_seq = page[-1]["seq"]

    if last_seq:
        pg_tx.run("set_meta", {"key": "chain_global_until", "value": str(last_seq)})
        pg_tx.run("set_event_seq", {"seq": last_seq})
    if last_id:
        pg_tx.run("set_item_seq", {"id": last_id})
    return {k: counts[k] for k in COUNTS}


def _linked(event: dict[str, Any], latest: dict[int, int]) -> dict[str, Any]:
    """The event with ``item_prev`` set: events written before SQLite's migration 0002
    have none, and on PostgreSQL an item's history is found by following these links
    back from its latest event. Hashes do not cover ``item_prev``, so setting it here
    leaves the chain as it was."""
    item_id = event["item_id"]
    if item_id is None:
        return {**event, "item_prev": 0}
    before = latest.get(item_id, 0)
    latest[item_id] = event["seq"]
    if event["item_prev"] is not None:
        return event  # as the file has it: doctor reports a wrong one on both sides
    return {**event, "item_prev": before}
