"""The lease lifecycle through the Python API, with the one clock frozen and moved.

SPEC sections 3, 4, 5 and 10. Every time the engine stores comes from
``orchestrator.clock.now_ms()`` (``time.time()``), so ``freeze_time`` makes every stored
time exact and ``frozen.tick`` / ``frozen.move_to`` move it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import apsw
import pytest
from freezegun import freeze_time

from orchestrator.clock import now_ms

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


@pytest.fixture
def clock():
    with freeze_time(T0) as frozen:
        yield frozen


def at_ms(frozen, ms: int) -> None:
    """Move the frozen clock to epoch milliseconds ``ms``."""
    frozen.move_to(datetime.fromtimestamp(ms / 1000, UTC))
    assert now_ms() == ms


def events_of(orch, item_id: int) -> list[dict]:
    return orch.list_events(item_id=item_id, limit=0)


def types_of(orch, item_id: int) -> list[str]:
    return [e["type"] for e in events_of(orch, item_id)]


def n_events(orch) -> int:
    return len(orch.list_events(limit=0))


def ceiling_ms(attempt: int) -> int:
    return min(300_000, 1000 * 2 ** (attempt - 1))


def assert_backoff(item: dict, now: int, attempt: int) -> None:
    delta = item["run_after"] - now
    ceil = ceiling_ms(attempt)
    assert ceil // 2 <= delta <= ceil, (attempt, delta)


# --- release and claim the next, in one transaction ------------------------------------


def _count_commits(orch) -> list[int]:
    """Count the commits of orch's connection (SQLite calls the WAL hook once each)."""
    commits: list[int] = []
    orch.store.conn.set_wal_hook(lambda _conn, _db, _frames: commits.append(1) or 0)
    return commits


# --- verify, status, lists ------------------------------------------------------------------


def test_event_log_is_append_only(orch, clock, db_path):
    orch.submit_task("x")
    conn = apsw.Connection(str(db_path))
    try:
        with pytest.raises(apsw.ConstraintError):
            conn.execute("UPDATE event_log SET type = 'forged'")
        with pytest.raises(apsw.ConstraintError):
            conn.execute("DELETE FROM event_log")
    finally:
        conn.close()
    assert orch.doctor()["ok"]
