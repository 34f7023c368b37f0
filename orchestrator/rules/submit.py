"""Making items: one at a time (``submit_task``), or many in one transaction."""

from __future__ import annotations

import json

from .. import defaults
from .. import events as ev
from ..errors import InvalidInput
from ..model import HOLDER_KINDS, PARENT_KIND, Effect, EventType, Kind, Status
from ..store import Tx
from .transitions import emit, get_row
from .views import public


def default_max_attempts(kind: str) -> int:
    """Sessions and goals are resumed however often their agent crashes (0: no limit)."""
    return 0 if kind in HOLDER_KINDS else defaults.MAX_ATTEMPTS


def submit_task(tx: Tx, now: int, *, payload: str, queue: str, priority: int,
                key: str | None, max_attempts: int | None, delay: int, kind: str,
                parent_id: int | None, effect: str | None, _internal: bool = False) -> dict:
    if kind in PARENT_KIND and not _internal:
        # A goal or tool execution is created under its parent's lease, with its token.
        raise InvalidInput(f"kind: a {kind} is created with "
                           f"{'create_goal' if kind == Kind.GOAL else 'execute_tool_idempotent'}"
                           f" (orch {'goal add' if kind == Kind.GOAL else 'tool exec'}), "
                           "under its parent's lease", data={"field": "kind"})
    if key is not None:
        existing = tx.item("item_by_key", {"kind": kind, "queue": queue, "key": key})
        if existing is not None:
            return {**public(existing), "created": False}
    want_parent = PARENT_KIND.get(kind)
    if parent_id is not None:
        parent = get_row(tx, parent_id)
        if want_parent and parent["kind"] != want_parent:
            raise InvalidInput(f"parent_id: a {kind}'s parent must be a {want_parent}, "
                               f"item {parent_id} is a {parent['kind']}",
                               data={"field": "parent_id"})
    elif want_parent:
        raise InvalidInput(f"parent_id: required for a {kind} (its {want_parent})",
                           data={"field": "parent_id"})
    if effect is None:
        effect = Effect.UNSAFE if kind == Kind.TOOL_EXECUTION else Effect.IDEMPOTENT
    if max_attempts is None:
        max_attempts = default_max_attempts(kind)
    row = tx.item("insert_item", {
        "kind": kind, "queue": queue, "parent_id": parent_id, "key": key,
        "payload": payload, "priority": priority, "max_attempts": max_attempts,
        "run_after": now + delay, "effect": effect, "now": now,
    })
    assert row is not None, "RETURNING answers the inserted row"
    emit(tx, now, row, EventType.SUBMITTED, ev.SUBMITTED)
    return {**public(row), "created": True}


def submit_many(tx: Tx, now: int, *, items: list[dict]) -> list[dict]:
    """``submit_task`` for each, in order; runs of plain items are inserted in bulk."""
    out: list[dict] = []
    plain: list[dict] = []
    for params in items:
        if params["key"] is None and params["parent_id"] is None \
                and params["kind"] not in PARENT_KIND:
            plain.append(params)
            continue
        out += insert_plain(tx, now, plain)
        plain = []
        out.append(submit_task(tx, now, **params))
    return out + insert_plain(tx, now, plain)


def insert_plain(tx: Tx, now: int, batch: list[dict]) -> list[dict]:
    """``submit_task`` for items that need no lookup (no key, no parent), with two
    executemany calls.

    Ids are given explicitly (``Tx.new_item_ids``). Per item this is the hot path of a
    bulk submit, so the event's detail is formatted directly (``submitted_detail``) and the answers'
    payloads are parsed back in one call.
    """
    if not batch:
        return []
    ids = tx.new_item_ids(len(batch))
    rows, events = [], []
    for i, p in enumerate(batch):
        kind = p["kind"]
        row = dict(NEW_ITEM, id=ids[i], kind=kind, queue=p["queue"], payload=p["payload"],
                   priority=p["priority"], run_after=now + p["delay"],
                   max_attempts=(p["max_attempts"] if p["max_attempts"] is not None
                                 else default_max_attempts(kind)),
                   effect=p["effect"] or Effect.IDEMPOTENT, created_at=now, updated_at=now)
        rows.append(row)
        events.append(ev.chained(tx, now, row["id"], EventType.SUBMITTED, None, None,
                                 submitted_detail(row)))
        row["last_event"] = events[-1]["seq"]
    tx.run_many("insert_event", events)  # first: they link to no earlier event
    tx.run_many("insert_item_with_id", rows)
    payloads = json.loads("[" + ",".join(row["payload"] for row in rows) + "]")
    answers = [{**row, "payload": payload, "cancel_requested": False, "created": True}
               for row, payload in zip(rows, payloads, strict=True)]
    for a in answers:
        del a["last_event"]
    return answers


def submitted_detail(row: dict) -> str:
    """``dump_json(state_of(row, SUBMITTED))`` for an item without key or parent, formatted
    directly: every string in it is a kind, an effect or a queue name, none of which
    can hold a character JSON escapes (checked by the tests against the general path)."""
    return (f'{{"kind":"{row["kind"]}","queue":"{row["queue"]}","parent_id":null,'
            f'"key":null,"priority":{row["priority"]},"status":"pending","attempts":0,'
            f'"max_attempts":{row["max_attempts"]},"run_after":{row["run_after"]},'
            f'"effect":"{row["effect"]}","payload_sha256":"{ev.digest(row["payload"])}"}}')


#: A new item's row as users see it (no token hash: it has none), columns in the
#: schema's order, before its own values.
NEW_ITEM: dict = {
    "id": None, "kind": None, "queue": None, "parent_id": None, "key": None, "payload": None,
    "priority": 0, "status": Status.PENDING, "attempts": 0, "max_attempts": None,
    "run_after": None, "effect": None, "checkpoint": None, "result": None, "error": None,
    "worker_id": None, "fence": None, "lease_ttl_ms": None,
    "lease_expires_at": None, "heartbeat_at": None, "cancel_requested": 0,
    "created_at": None, "updated_at": None,
}
