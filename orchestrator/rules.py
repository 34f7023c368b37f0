"""The lease rules. Every operation is a function ``op(tx, now, **params)``.

Parameters arrive checked and normalised by ``validate.check``; times are epoch ms.
Each function runs inside one transaction that its caller owns (the embedded API opens
one per call, the daemon one per group of requests with a savepoint each) and appends
its events in it, so a state change and its event are never apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import threading
from typing import Any

from . import events as ev
from .clock import iso
from .errors import Conflict, InvalidInput, LeaseLost, NotFound, rpc_code
from .store import SCHEMA_VERSION, CommitAndRaise, Rollback, Tx
from .validate import STATUSES, claimed_through, dump_json

BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 300_000
PARENT_KIND = {"goal": "session", "tool_execution": "goal"}
HOLDER_KINDS = ("session", "goal")  # kinds whose lease covers their children
JSON_COLUMNS = ("payload", "checkpoint", "result")


# --- helpers --------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(row: dict, token: str) -> bool:
    """Whether ``token`` is the row's claim token, compared in constant time."""
    return row["token_hash"] is not None and hmac.compare_digest(row["token_hash"],
                                                                 hash_token(token))


class _Entropy:
    """Bytes of ``os.urandom``, read 4 KiB at a time.

    A token's 18 random bytes cost a system call each when read one token at a time
    (about 17 µs on a small VM, a tenth of a claim); this reads them for ~200 tokens at
    once. The same kernel CSPRNG, only buffered; a forked child starts empty so parent
    and child never hand out the same bytes.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buf = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        with self.lock:
            if self.pos + n > len(self.buf):
                self.buf, self.pos = os.urandom(4096), 0
            self.pos += n
            return self.buf[self.pos - n:self.pos]


_ENTROPY = _Entropy()
os.register_at_fork(after_in_child=_ENTROPY.__init__)


def new_token() -> tuple[str, str]:
    """A fresh claim token (24 URL-safe characters, 144 random bits) and its hash."""
    token = base64.urlsafe_b64encode(_ENTROPY.take(18)).decode()
    return token, hash_token(token)


def backoff_ms(attempts: int) -> int:
    """Exponential backoff with jitter: half fixed, half random, capped."""
    ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** max(0, attempts - 1))
    return ceiling // 2 + int(random.random() * (ceiling - ceiling // 2))


def public(row: dict) -> dict[str, Any]:
    """An item as users see it: JSON values decoded, the token hash left out."""
    out = dict(row)
    del out["token_hash"], out["last_event"]
    for col in JSON_COLUMNS:
        if out[col] is not None:
            out[col] = json.loads(out[col])
    out["cancel_requested"] = bool(out["cancel_requested"])
    return out


def attempts_left(row: dict) -> bool:
    return row["max_attempts"] == 0 or row["attempts"] < row["max_attempts"]


def get_row(tx: Tx, item_id: int) -> dict:
    row = tx.one("item", {"id": item_id})
    if row is None:
        raise NotFound(f"item {item_id} not found", data={"item_id": item_id})
    return row


def held(tx: Tx, item_id: int, token: str, now: int) -> dict:
    """The item, if ``token`` is its live claim (and, for a goal or tool execution,
    every ancestor still holds the claim it was made under); otherwise LEASE_LOST."""
    row = get_row(tx, item_id)
    if row["status"] != "running" or not same_token(row, token):
        raise LeaseLost(f"item {item_id}: the token is not its current claim "
                        f"(item is {row['status']})",
                        data={"item_id": item_id, "status": row["status"]})
    if row["lease_expires_at"] <= now:
        raise LeaseLost(f"item {item_id}: the lease expired at {iso(row['lease_expires_at'])}",
                        data={"item_id": item_id, "status": row["status"]})
    if row["kind"] in PARENT_KIND:
        lost = lost_ancestor(tx, row, now)
        if lost is not None:
            ancestor, why = lost
            raise LeaseLost(f"item {item_id}: the lease of its {ancestor['kind']} "
                            f"{ancestor['id']} is gone ({why})",
                            data={"item_id": item_id, "status": row["status"],
                                  "ancestor_id": ancestor["id"]})
    return row


def lost_ancestor(tx: Tx, row: dict, now: int) -> tuple[dict, str] | None:
    """The first ancestor of a goal or tool execution whose claim, the one the child's
    claim was made under, is no longer its live claim, and why; None when all hold.

    A child is claimed only while its parent's claim is live and current, so that
    claim's fence is below the child's; any later claim of the parent gets a higher
    fence (fences only grow). So the parent still holds that claim exactly when it is
    running, its lease has not ended, and its fence is below the child's.
    """
    child = row
    while child["kind"] in PARENT_KIND:
        parent = get_row(tx, child["parent_id"])
        if parent["status"] != "running":
            return parent, f"the {parent['kind']} is {parent['status']}"
        if parent["lease_expires_at"] <= now:
            return parent, f"its lease expired at {iso(parent['lease_expires_at'])}"
        if parent["fence"] > child["fence"]:
            return parent, (f"the {parent['kind']} was claimed again, fence "
                            f"{parent['fence']}")
        child = parent
    return None


def emit(tx: Tx, now: int, row: dict, type_: str, fields: tuple[str, ...] = (),
         **extra: Any) -> None:
    detail = ev.state_of(row, fields)
    detail.update(extra)
    ev.append(tx, now, row["id"], type_, row["worker_id"], row["fence"], detail)


def register_worker(tx: Tx, now: int, worker_id: str, expires: int) -> None:
    tx.run("register_worker", {"worker_id": worker_id, "now": now, "expires": expires})


def settle(tx: Tx, now: int, row: dict, status: str, *, run_after: int | None = None,
           result: str | None = None, error: str | None = None, keep: bool = False) -> dict:
    """Move an item out of its lease (or out of pending/unknown) to ``status``.

    ``row`` is the item as this transaction read it; the new row is built here, as the
    settle query writes it, rather than read back (``RETURNING *`` costs more).
    """
    new = settled(row, now, status, run_after=run_after,
                  result=row["result"] if keep else result,
                  error=row["error"] if keep else error)
    tx.run("settle", new)
    return new


def settled(row: dict, now: int, status: str, *, run_after: int | None,
            result: str | None, error: str | None) -> dict:
    """The row after the settle query: the lease dropped, worker_id and fence kept."""
    return dict(row, status=status, run_after=row["run_after"] if run_after is None
                else run_after, result=result, error=error, token_hash=None,
                lease_expires_at=None, heartbeat_at=None, updated_at=now)


# --- submit ---------------------------------------------------------------------------


def submit_task(tx: Tx, now: int, *, payload: str, queue: str, priority: int,
                key: str | None, max_attempts: int | None, delay: int, kind: str,
                parent_id: int | None, effect: str | None, _internal: bool = False) -> dict:
    if kind in PARENT_KIND and not _internal:
        # A goal or tool execution is created under its parent's lease, with its token.
        raise InvalidInput(f"kind: a {kind} is created with "
                           f"{'create_goal' if kind == 'goal' else 'execute_tool_idempotent'}"
                           f" (orch {'goal add' if kind == 'goal' else 'tool exec'}), "
                           "under its parent's lease", data={"field": "kind"})
    if key is not None:
        existing = tx.one("item_by_key", {"kind": kind, "queue": queue, "key": key})
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
        effect = "unsafe" if kind == "tool_execution" else "idempotent"
    if max_attempts is None:
        max_attempts = 0 if kind in HOLDER_KINDS else 3
    row = tx.one("insert_item", {
        "kind": kind, "queue": queue, "parent_id": parent_id, "key": key,
        "payload": payload, "priority": priority, "max_attempts": max_attempts,
        "run_after": now + delay, "effect": effect, "now": now,
    })
    emit(tx, now, row, "submitted", ev.SUBMITTED)
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
    """Insert items that need no lookup (no key, no parent) with two executemany calls.

    Ids are given explicitly, continuing from the largest: what SQLite would pick,
    since items are never deleted. Per item this is the hot path of a bulk submit, so
    the event's detail is formatted directly (``submitted_detail``) and the answers'
    payloads are parsed back in one call.
    """
    if not batch:
        return []
    next_id = tx.one("max_item_id")["id"] + 1
    rows, events = [], []
    for i, p in enumerate(batch):
        kind = p["kind"]
        row = dict(NEW_ITEM, id=next_id + i, kind=kind, queue=p["queue"], payload=p["payload"],
                   priority=p["priority"], run_after=now + p["delay"],
                   max_attempts=(p["max_attempts"] if p["max_attempts"] is not None
                                 else 0 if kind in HOLDER_KINDS else 3),
                   effect=p["effect"] or "idempotent", created_at=now, updated_at=now)
        rows.append(row)
        events.append(ev.chained(tx, now, row["id"], "submitted", None, None,
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
NEW_ITEM = {
    "id": None, "kind": None, "queue": None, "parent_id": None, "key": None, "payload": None,
    "priority": 0, "status": "pending", "attempts": 0, "max_attempts": None,
    "run_after": None, "effect": None, "checkpoint": None, "result": None, "error": None,
    "worker_id": None, "fence": None, "lease_ttl_ms": None,
    "lease_expires_at": None, "heartbeat_at": None, "cancel_requested": 0,
    "created_at": None, "updated_at": None,
}


# --- claim ----------------------------------------------------------------------------


def claim_task(tx: Tx, now: int, *, worker_id: str, queues: list[str], ttl: int,
               kinds: list[str], item_id: int | None = None, wait: int = 0) -> dict | None:
    """Claim the best claimable item, or ``item_id``; None when nothing is claimable.

    ``wait`` is the caller's business (the embedded API polls, the daemon parks).
    """
    if item_id is not None:
        row = get_row(tx, item_id)
        if row["status"] == "running" and row["lease_expires_at"] <= now:
            recover_to_claim(tx, now, row, worker_id)  # taken over, or refused
        elif row["kind"] in PARENT_KIND:
            raise InvalidInput(f"item_id: item {item_id} is a {row['kind']}; "
                               f"{claimed_through(row['kind'])}",
                               data={"field": "item_id"})
        elif row["status"] == "running":
            raise Conflict(
                f"item {item_id} is held by {row['worker_id']} until "
                f"{iso(row['lease_expires_at'])}",
                data={"item_id": item_id, "worker_id": row["worker_id"],
                      "lease_expires_at": row["lease_expires_at"]})
        elif row["status"] != "pending":
            raise Conflict(f"item {item_id} is {row['status']}: only a pending item or an "
                           "expired lease can be claimed",
                           data={"item_id": item_id, "status": row["status"]})
        return claim_row(tx, now, item_id, worker_id, ttl, row)
    best = None
    for kind in kinds:
        for queue in queues:
            c = tx.one("next_claimable", {"kind": kind, "queue": queue, "now": now})
            if c is not None and (best is None or (c["priority"], -c["id"])
                                  > (best["priority"], -best["id"])):
                best = c
    if best is None:
        return None
    return claim_row(tx, now, best["id"], worker_id, ttl, best)


def claim_row(tx: Tx, now: int, item_id: int, worker_id: str, ttl: int,
              row: dict | None = None) -> dict:
    """Claim the item (``row``: as this transaction read it, if at hand)."""
    if row is None:
        row = get_row(tx, item_id)
    # The fence is the sequence number of the 'claimed' event appended below.
    fence = ev.next_seq(tx)
    token, token_hash = new_token()
    # The new row as the claim query writes it (cheaper than reading it back).
    new = dict(row, status="running", attempts=row["attempts"] + 1, worker_id=worker_id,
               fence=fence, token_hash=token_hash, lease_ttl_ms=ttl,
               lease_expires_at=now + ttl, heartbeat_at=now, updated_at=now,
               cancel_requested=0)
    tx.run("claim_item", new)
    return claimed(tx, now, new, token)


def claimed(tx: Tx, now: int, row: dict, token: str) -> dict:
    register_worker(tx, now, row["worker_id"], row["lease_expires_at"])
    emit(tx, now, row, "claimed", ev.CLAIMED)
    assert tx.last_seq == row["fence"], "a claim's fence is its claimed event's sequence"
    claim = public(row)
    claim["token"] = token
    claim["attempt"] = row["attempts"]
    return claim


def recover_to_claim(tx: Tx, now: int, row: dict, worker_id: str) -> None:
    """Before a claim by id of an expired lease that recovery has not reached yet:
    what recovery would do. A task or session that recovery would send back to
    pending is taken over; anything else (unsafe, cancel requested, out of attempts,
    a goal or tool execution) is recovered, committed, and the claim refused."""
    status, _ = after_lost_lease(row, now)
    if status == "pending" and row["kind"] not in PARENT_KIND:
        take_over(tx, now, row, worker_id)
        return
    expire(tx, now, row, "lease_expired", [], set())
    why = (claimed_through(row["kind"]) if status == "pending" else
           {"unknown": "its effect is unsafe, so it is not run again; resolve it with "
                       "orch resolve",
            "cancelled": "a cancel was requested",
            "dead": "it has no attempts left"}[status])
    raise CommitAndRaise(Conflict(
        f"item {row['id']}: the lease of {row['worker_id']} expired at "
        f"{iso(row['lease_expires_at'])}; recovered, it is now {status} ({why})",
        data={"item_id": row["id"], "status": status}))


def take_over(tx: Tx, now: int, row: dict, worker_id: str) -> None:
    """Fence out the holder of an expired lease that recovery has not reached yet."""
    emit(tx, now, row, "taken_over", by=worker_id, previous_worker=row["worker_id"],
         previous_fence=row["fence"])
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, "parent_taken_over", [], {row["id"]})


def fence_children(tx: Tx, now: int, row: dict, reason: str, done: list[dict],
                   seen: set[int]) -> None:
    """Fence out the running descendants of a session or goal whose claim has ended."""
    for child in tx.all("running_children", {"id": row["id"]}):
        if child["id"] not in seen:
            expire(tx, now, child, reason, done, seen, reason)


# --- heartbeat ------------------------------------------------------------------------


def heartbeat(tx: Tx, now: int, *, item_id: int | None, token: str | None,
              ttl: int | None, leases: list[dict] | None) -> dict:
    """Extend one lease (``item_id`` and ``token``) or several (``leases``).

    Several: each lease is extended or refused on its own, in a savepoint of its own,
    and the answer lists each in the order given.
    """
    if leases is not None:
        if item_id is not None or token is not None:
            raise InvalidInput("heartbeat: give item_id with token, or leases, not both",
                               data={"field": "leases"})
        return {"leases": [beat_one(tx, now, lease["item_id"], lease["token"], ttl)
                           for lease in leases]}
    if item_id is None or token is None:
        raise InvalidInput("heartbeat: give item_id with token, or leases=[{item_id, token}]",
                           data={"field": "token" if item_id is not None else "item_id"})
    return beat(tx, now, item_id, token, ttl)


def beat(tx: Tx, now: int, item_id: int, token: str, ttl: int | None) -> dict:
    row = held(tx, item_id, token, now)
    new = extend(tx, now, row, ttl)
    register_worker(tx, now, new["worker_id"], new["lease_expires_at"])
    return lease_view(new)


def beat_one(tx: Tx, now: int, item_id: int, token: str, ttl: int | None) -> dict:
    """``beat``, or the reason it was refused; a refusal undoes only its own lease."""
    try:
        with tx.savepoint():
            return beat(tx, now, item_id, token, ttl)
    except (LeaseLost, NotFound) as exc:
        return {"id": item_id, "error": {"code": rpc_code(exc), "reason": exc.reason,
                                         "message": str(exc)}}


def extend(tx: Tx, now: int, row: dict, ttl: int | None) -> dict:
    new = tx.one("extend_lease", {"id": row["id"], "now": now,
                                  "expires": now + (ttl or row["lease_ttl_ms"])})
    emit(tx, now, new, "heartbeat", ev.HEARTBEAT)
    return new


def lease_view(row: dict) -> dict:
    return {"id": row["id"], "fence": row["fence"], "lease_expires_at": row["lease_expires_at"],
            "cancel_requested": bool(row["cancel_requested"])}


# --- release --------------------------------------------------------------------------


def release_task(tx: Tx, now: int, *, item_id: int, token: str, outcome: str,
                 result: str | None, error: str | None, retry_in: int | None,
                 no_retry: bool) -> dict:
    row = held(tx, item_id, token, now)
    run_after = None
    if outcome in ("succeeded", "cancelled"):
        status = outcome
    elif row["cancel_requested"]:
        status = "cancelled"  # the holder gave up after a cancel request: do not rerun
    elif outcome == "requeue" and attempts_left(row):
        status, run_after = "pending", now + (retry_in or 0)
    elif outcome == "requeue":
        status = "dead"  # the claim counted, and it was the last one allowed
    elif no_retry:
        status = "failed"
    elif attempts_left(row):
        status = "pending"
        run_after = now + (retry_in if retry_in is not None else backoff_ms(row["attempts"]))
    else:
        status = "dead"
    new = settle(tx, now, row, status, run_after=run_after, result=result, error=error)
    emit(tx, now, new, "released", ev.SETTLED, outcome=outcome)
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, "parent_released", [], {row["id"]})
    return public(new)


def release_and_claim(tx: Tx, now: int, *, item_id: int, token: str, outcome: str,
                      result: str | None, error: str | None, retry_in: int | None,
                      no_retry: bool, worker_id: str | None, queues: list[str] | None,
                      kinds: list[str] | None, ttl: int | None, wait: int = 0) -> dict:
    """``release_task``, then ``claim_task`` for the next item, in one transaction.

    A worker loop's two commits become one. The claim goes like the released one
    unless told otherwise: same worker, the item's queue and kind, its lease length.
    An invalid release changes nothing and claims nothing.
    """
    released = release_task(tx, now, item_id=item_id, token=token, outcome=outcome,
                            result=result, error=error, retry_in=retry_in, no_retry=no_retry)
    nxt = claim_task(tx, now, **next_claim(released, worker_id=worker_id, queues=queues,
                                           kinds=kinds, ttl=ttl))
    return {"released": released, "next": nxt}


def next_claim(released: dict, *, worker_id: str | None, queues: list[str] | None,
               kinds: list[str] | None, ttl: int | None, wait: int = 0, **_: Any) -> dict:
    """The ``claim_task`` parameters of a ``release_and_claim`` (its defaults filled in)."""
    if not kinds and released["kind"] in PARENT_KIND:
        raise InvalidInput(f"kinds: give the next claim's kinds: "
                           f"{claimed_through(released['kind'])}", data={"field": "kinds"})
    return {"worker_id": worker_id or released["worker_id"],
            "queues": queues or [released["queue"]], "kinds": kinds or [released["kind"]],
            "ttl": ttl or released["lease_ttl_ms"], "item_id": None, "wait": wait}


# --- recovery -------------------------------------------------------------------------


def after_lost_lease(row: dict, now: int) -> tuple[str, int | None]:
    if row["effect"] == "unsafe":
        return "unknown", None  # its side effect may have happened: never rerun blindly
    if row["cancel_requested"]:
        return "cancelled", None
    if attempts_left(row):
        return "pending", now + backoff_ms(row["attempts"])
    return "dead", None


def expire(tx: Tx, now: int, row: dict, reason: str, done: list[dict], seen: set[int],
           child_reason: str = "parent_lease_lost") -> None:
    """Fence out a lost lease, then the running descendants it covered."""
    seen.add(row["id"])
    status, run_after = after_lost_lease(row, now)
    new = settle(tx, now, row, status, run_after=run_after, keep=True)
    emit(tx, now, new, "expired", ev.SETTLED, reason=reason)
    done.append({"id": row["id"], "kind": row["kind"], "queue": row["queue"],
                 "worker_id": row["worker_id"], "fence": row["fence"], "status": status,
                 "run_after": new["run_after"], "reason": reason})
    if row["kind"] in HOLDER_KINDS:
        fence_children(tx, now, row, child_reason, done, seen)


def expire_many(tx: Tx, now: int, rows: list[dict], done: list[dict]) -> None:
    """``expire`` for items that cover no children, with one executemany per table."""
    updates, events = [], []
    for row in rows:
        status, run_after = after_lost_lease(row, now)
        new = settled(row, now, status, run_after=run_after, result=row["result"],
                      error=row["error"])
        events.append(ev.chained(tx, now, row["id"], "expired", row["worker_id"], row["fence"],
                                 expired_detail(new)))
        new["last_event"] = events[-1]["seq"]
        updates.append(new)
        done.append({"id": row["id"], "kind": row["kind"], "queue": row["queue"],
                     "worker_id": row["worker_id"], "fence": row["fence"], "status": status,
                     "run_after": new["run_after"], "reason": "lease_expired"})
    if rows:
        tx.run_many("insert_event", events)
        tx.run_many("settle_linked", updates)


def expired_detail(new: dict) -> str:
    """``dump_json({**state_of(new, SETTLED), "reason": "lease_expired"})``, formatted
    directly for recovery in bulk (checked by the tests against the general path)."""
    result = "null" if new["result"] is None else f'"{ev.digest(new["result"])}"'
    return (f'{{"status":"{new["status"]}","run_after":{new["run_after"]},'
            f'"result_sha256":{result},"error":{dump_json(new["error"])},'
            f'"lease_expires_at":null,"heartbeat_at":null,"reason":"lease_expired"}}')


def stale_recovery(tx: Tx, now: int, *, dry_run: bool = False) -> dict:
    """Recover every expired lease; costs in proportion to what has expired.

    Sessions and goals go first, one by one, since each takes its running children
    with it; the rest, which cover nothing, are settled in bulk.
    """
    done: list[dict] = []
    seen: set[int] = set()
    expired = tx.all("expired_leases", {"now": now, "limit": -1})
    for row in expired:
        if row["kind"] in HOLDER_KINDS and row["id"] not in seen:
            expire(tx, now, row, "lease_expired", done, seen)
    expire_many(tx, now, [r for r in expired if r["id"] not in seen], done)
    result = {"recovered": done, "count": len(done), "dry_run": dry_run}
    if dry_run:
        raise Rollback(result)
    return result


# --- the rest of the lifecycle ----------------------------------------------------------


def cancel_task(tx: Tx, now: int, *, item_id: int) -> dict:
    row = get_row(tx, item_id)
    if row["status"] == "pending":
        new = settle(tx, now, row, "cancelled", keep=True)
        emit(tx, now, new, "cancelled", ev.SETTLED)
        return public(new)
    if row["status"] == "running":
        if row["cancel_requested"]:
            return public(row)  # asked already: nothing new to record
        new = tx.one("request_cancel", {"id": item_id, "now": now})
        emit(tx, now, new, "cancel_requested", ev.CANCEL_REQUESTED)
        return public(new)
    hint = "; resolve it with orch resolve" if row["status"] == "unknown" else ""
    raise Conflict(f"item {item_id} is {row['status']} and cannot be cancelled{hint}",
                   data={"item_id": item_id, "status": row["status"]})


def checkpoint(tx: Tx, now: int, *, item_id: int, token: str, data: str) -> dict:
    held(tx, item_id, token, now)
    new = tx.one("save_checkpoint", {"id": item_id, "checkpoint": data, "now": now})
    emit(tx, now, new, "checkpoint", ev.CHECKPOINT, size=len(data.encode()))
    return {"id": item_id, "fence": new["fence"], "checkpoint": json.loads(data)}


def resolve_task(tx: Tx, now: int, *, item_id: int, outcome: str) -> dict:
    row = get_row(tx, item_id)
    if row["status"] != "unknown":
        raise Conflict(f"item {item_id} is {row['status']}: only unknown items are resolved",
                       data={"item_id": item_id, "status": row["status"]})
    if outcome == "retry":
        new = settle(tx, now, row, "pending", run_after=now, keep=True)
    else:
        new = settle(tx, now, row, outcome, keep=True)
    emit(tx, now, new, "resolved", ev.SETTLED, outcome=outcome)
    return public(new)


# --- reads ----------------------------------------------------------------------------


def get_task(tx: Tx, now: int, *, item_id: int) -> dict:
    return public(get_row(tx, item_id))


def list_tasks(tx: Tx, now: int, *, status: str | None, queue: str | None,
               kind: str | None, limit: int) -> list[dict]:
    rows = tx.all("list_items", {"status": status, "queue": queue, "kind": kind,
                                 "limit": limit or -1})
    return [public(r) for r in rows]


def event_view(row: dict) -> dict:
    return {**row, "detail": json.loads(row["detail"])}


def list_events(tx: Tx, now: int, *, item_id: int | None, since: int, limit: int) -> list[dict]:
    params = {"since": since, "limit": limit or -1, "item_id": item_id}
    rows = tx.all("events_since" if item_id is None else "events_of_item", params)
    if item_id is not None and not rows:
        get_row(tx, item_id)  # no events: an item with none newer, or no such item
    return [event_view(r) for r in rows]


def verify(tx: Tx, now: int, *, item_id: int, token: str) -> dict:
    row = get_row(tx, item_id)
    valid = (row["status"] == "running" and same_token(row, token)
             and row["lease_expires_at"] > now
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
            "fence": tx.one("max_fence")["fence"] or 0, "schema_version": SCHEMA_VERSION}


def ping(tx: Tx, now: int) -> dict:
    return {"pong": True, "now": now}


def next_due(tx: Tx, now: int, *, kinds: list[str], queues: list[str]) -> int | None:
    """When the next delayed item a waiter could take becomes claimable, if any."""
    dues = [r["due"] for kind in kinds for queue in queues
            if (r := tx.one("next_due", {"kind": kind, "queue": queue, "now": now}))
            and r["due"] is not None]
    return min(dues, default=None)
