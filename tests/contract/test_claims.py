"""Claiming: the best claimable item goes first (highest priority, then oldest, within
the asked queues and kinds, not before its run_after); a claim by id takes that very
item whatever its priority or delay, or says why it cannot."""

from __future__ import annotations

import pytest
from conftest import T0_MS

from orchestrator import Conflict, NotFound


def test_priority_higher_first_ties_older_first(api, clock):
    a = api.submit_task("a", priority=0)["id"]
    b = api.submit_task("b", priority=5)["id"]
    c = api.submit_task("c", priority=5)["id"]
    d = api.submit_task("d", priority=-1)["id"]
    api.submit_task("other", priority=100, queue="elsewhere")
    got = [api.claim_task("w1")["id"] for _ in range(4)]
    assert got == [b, c, a, d]
    assert api.claim_task("w1") is None


def test_priority_across_queues(api, clock):
    x = api.submit_task("x", queue="q2", priority=1)["id"]
    y = api.submit_task("y", queue="q1", priority=1)["id"]
    z = api.submit_task("z", queue="q1", priority=2)["id"]
    got = [api.claim_task("w1", ["q1", "q2"])["id"] for _ in range(3)]
    assert got == [z, x, y]


def test_kinds_filter(api, clock):
    t = api.submit_task("t")["id"]
    s = api.submit_task("s", kind="session", priority=9)["id"]
    assert api.claim_task("w1")["id"] == t  # default kinds: task only
    assert api.claim_task("w1") is None
    assert api.claim_task("w1", kinds=["session"])["id"] == s


def test_delay(api, clock):
    item = api.submit_task("later", delay=10)
    assert item["run_after"] == T0_MS + 10_000
    assert api.claim_task("w1") is None
    clock.tick(9.999)
    assert api.claim_task("w1") is None
    clock.tick(0.001)
    claim = api.claim_task("w1")
    assert claim is not None and claim["id"] == item["id"]


def test_claim_item_ignores_run_after_and_priority(api, clock):
    delayed = api.submit_task("later", delay=3600, priority=-5)["id"]
    api.submit_task("urgent", priority=50)
    claim = api.claim_task("w1", item_id=delayed)
    assert claim["id"] == delayed and claim["status"] == "running"
    assert claim["attempt"] == 1


def test_claim_item_live_lease_conflict_names_holder(api, clock, store):
    iid = api.submit_task("x")["id"]
    api.claim_task("holder-7", ttl=10)
    clock.tick(9.9)
    before = store.snapshot()
    with pytest.raises(Conflict) as exc:
        api.claim_task("w2", item_id=iid)
    assert "holder-7" in str(exc.value)
    assert exc.value.data["worker_id"] == "holder-7"
    assert exc.value.data["lease_expires_at"] == T0_MS + 10_000
    assert store.snapshot() == before


def test_claim_item_not_found(api, clock):
    with pytest.raises(NotFound):
        api.claim_task("w1", item_id=424242)


@pytest.mark.parametrize("status", ["succeeded", "failed", "dead", "cancelled", "unknown"])
def test_claim_item_finished_is_conflict(api, clock, status):
    iid = api.submit_task("x", max_attempts=1,
                          effect="unsafe" if status == "unknown" else None)["id"]
    if status == "cancelled":
        api.cancel_task(iid)
    else:
        c = api.claim_task("w1", ttl=1)
        if status == "unknown":
            clock.tick(2)
            api.stale_recovery()
        else:
            outcome = {"succeeded": "succeeded", "failed": "failed", "dead": "failed"}[status]
            api.release_task(iid, c["token"], outcome, no_retry=status == "failed" or None)
    assert api.get_task(iid)["status"] == status
    with pytest.raises(Conflict):
        api.claim_task("w2", item_id=iid)
