"""What every lease rule builds on: reading an item, moving it out of its lease, and
recording the change as an event in the same transaction."""

from __future__ import annotations

import random
from typing import Any, TypeVar, cast

from .. import events as ev
from ..errors import NotFound
from ..model import ExpiredRow, ItemRow
from ..store import Tx

R = TypeVar("R", bound=ExpiredRow)

BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 300_000


def backoff_ms(attempts: int) -> int:
    """Exponential backoff with jitter: half fixed, half random, capped."""
    ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** max(0, attempts - 1))
    return ceiling // 2 + int(random.random() * (ceiling - ceiling // 2))


def attempts_left(row: ExpiredRow) -> bool:
    return row["max_attempts"] == 0 or row["attempts"] < row["max_attempts"]


def get_row(tx: Tx, item_id: int) -> ItemRow:
    row = tx.item("item", {"id": item_id})
    if row is None:
        raise NotFound(f"item {item_id} not found", data={"item_id": item_id})
    return row


def emit(tx: Tx, now: int, row: ExpiredRow, type_: str, fields: tuple[str, ...] = (),
         **extra: Any) -> None:
    """Append the event of ``row``'s transition: the ``fields`` it set, and ``extra``."""
    detail = ev.state_of(row, fields)
    detail.update(extra)
    ev.append(tx, now, row["id"], type_, row["worker_id"], row["fence"], detail)


def register_worker(tx: Tx, now: int, worker_id: str, expires: int) -> None:
    tx.run("register_worker", {"worker_id": worker_id, "now": now, "expires": expires})


def settle(tx: Tx, now: int, row: R, status: str, *, run_after: int | None = None,
           result: str | None = None, error: str | None = None, keep: bool = False) -> R:
    """Move an item out of its lease (or out of pending/unknown) to ``status``.

    ``row`` is the item as this transaction read it; the new row is built here, as the
    settle query writes it, rather than read back (``RETURNING *`` costs more).
    """
    new = settled(row, now, status, run_after=run_after,
                  result=row["result"] if keep else result,
                  error=row["error"] if keep else error)
    tx.run("settle", new)
    return new


def settled(row: R, now: int, status: str, *, run_after: int | None,
            result: str | None, error: str | None) -> R:
    """The row after the settle query: the lease dropped, worker_id and fence kept."""
    return cast(R, dict(row, status=status, run_after=row["run_after"] if run_after is None
                        else run_after, result=result, error=error, token_hash=None,
                        lease_expires_at=None, heartbeat_at=None, updated_at=now))
