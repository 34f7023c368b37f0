"""The lease lifecycle through the Python API, with the one clock frozen and moved.

SPEC sections 3, 4, 5 and 10. Every time the engine stores comes from
``orchestrator.clock.now_ms()`` (``time.time()``), so ``freeze_time`` makes every stored
time exact and ``frozen.tick`` / ``frozen.move_to`` move it.
"""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import apsw
import pytest
from conftest import snapshot
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import Conflict, LeaseLost, NotFound, Orchestrator
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


# --- the happy path -------------------------------------------------------------------


def test_submit_claim_heartbeat_release_succeeded(orch, clock):
    item = orch.submit_task({"n": 1}, queue="q1")
    assert item["created"] is True
    assert item["status"] == "pending"
    assert item["kind"] == "task" and item["queue"] == "q1" and item["priority"] == 0
    assert item["attempts"] == 0 and item["max_attempts"] == 3
    assert item["effect"] == "idempotent"
    assert item["payload"] == {"n": 1}
    assert item["run_after"] == T0_MS
    assert item["checkpoint"] is None and item["result"] is None and item["error"] is None
    assert item["worker_id"] is None and item["fence"] is None
    assert item["lease_expires_at"] is None and item["cancel_requested"] is False
    assert "token_hash" not in item and "token" not in item
    iid = item["id"]

    clock.tick(1)
    claim = orch.claim_task("w1", ["q1"], ttl=10)
    assert claim["id"] == iid
    assert claim["status"] == "running"
    assert claim["attempt"] == 1 and claim["attempts"] == 1
    assert claim["worker_id"] == "w1"
    assert claim["fence"] == 2  # the seq of its 'claimed' event, after 'submitted' (1)
    assert isinstance(claim["token"], str) and len(claim["token"]) >= 16
    assert claim["lease_expires_at"] == T0_MS + 1000 + 10_000
    assert claim["payload"] == {"n": 1} and claim["checkpoint"] is None
    assert claim["kind"] == "task" and claim["queue"] == "q1" and claim["parent_id"] is None
    assert orch.verify(iid, claim["token"]) == {"valid": True, "fence": 2, "status": "running"}
    # nothing else to claim
    assert orch.claim_task("w2", ["q1"]) is None

    clock.tick(4)
    hb = orch.heartbeat(iid, claim["token"])
    assert hb.items() >= {"id": iid, "fence": 2, "lease_expires_at": T0_MS + 5000 + 10_000,
                          "cancel_requested": False}.items()
    got = orch.get_task(iid)
    assert got["lease_expires_at"] == T0_MS + 15_000
    assert got["heartbeat_at"] == T0_MS + 5000

    clock.tick(1)
    done = orch.release_task(iid, claim["token"], "succeeded", result={"pages": 3})
    assert done["status"] == "succeeded"
    assert done["result"] == {"pages": 3}
    assert done["error"] is None
    assert done["lease_expires_at"] is None
    # the last holder is still named
    assert done["worker_id"] == "w1" and done["fence"] == 2
    assert orch.get_task(iid) == done
    assert orch.verify(iid, claim["token"]) == {"valid": False, "fence": 2,
                                               "status": "succeeded"}
    assert orch.claim_task("w1", ["q1"]) is None

    evs = events_of(orch, iid)
    assert [e["type"] for e in evs] == ["submitted", "claimed", "heartbeat", "released"]
    assert [e["at"] for e in evs] == [T0_MS, T0_MS + 1000, T0_MS + 5000, T0_MS + 6000]
    assert evs[1]["worker_id"] == "w1" and evs[1]["fence"] == 2 == evs[1]["seq"]
    assert evs[3]["detail"]["outcome"] == "succeeded"
    assert evs[3]["detail"]["status"] == "succeeded"
    assert orch.doctor()["ok"]


def test_priority_higher_first_ties_older_first(orch, clock):
    a = orch.submit_task("a", priority=0)["id"]
    b = orch.submit_task("b", priority=5)["id"]
    c = orch.submit_task("c", priority=5)["id"]
    d = orch.submit_task("d", priority=-1)["id"]
    orch.submit_task("other", priority=100, queue="elsewhere")
    got = [orch.claim_task("w1")["id"] for _ in range(4)]
    assert got == [b, c, a, d]
    assert orch.claim_task("w1") is None


def test_priority_across_queues(orch, clock):
    x = orch.submit_task("x", queue="q2", priority=1)["id"]
    y = orch.submit_task("y", queue="q1", priority=1)["id"]
    z = orch.submit_task("z", queue="q1", priority=2)["id"]
    got = [orch.claim_task("w1", ["q1", "q2"])["id"] for _ in range(3)]
    assert got == [z, x, y]


def test_kinds_filter(orch, clock):
    t = orch.submit_task("t")["id"]
    s = orch.submit_task("s", kind="session", priority=9)["id"]
    assert orch.claim_task("w1")["id"] == t  # default kinds: task only
    assert orch.claim_task("w1") is None
    assert orch.claim_task("w1", kinds=["session"])["id"] == s


def test_delay(orch, clock):
    item = orch.submit_task("later", delay=10)
    assert item["run_after"] == T0_MS + 10_000
    assert orch.claim_task("w1") is None
    clock.tick(9.999)
    assert orch.claim_task("w1") is None
    clock.tick(0.001)
    claim = orch.claim_task("w1")
    assert claim is not None and claim["id"] == item["id"]


# --- failure, retries and backoff ---------------------------------------------------------


def test_failed_release_backs_off_exponentially(orch, clock):
    iid = orch.submit_task("x", max_attempts=0)["id"]  # unlimited: reach the cap
    for attempt in range(1, 12):
        claim = orch.claim_task("w1")
        assert claim["id"] == iid and claim["attempt"] == attempt
        clock.tick(0.25)
        now = now_ms()
        item = orch.release_task(iid, claim["token"], "failed", error=f"boom {attempt}")
        assert item["status"] == "pending"
        assert item["attempts"] == attempt
        assert item["error"] == f"boom {attempt}"
        assert item["lease_expires_at"] is None
        assert_backoff(item, now, attempt)
        # not claimable before run_after, claimable at it
        at_ms(clock, item["run_after"] - 1)
        assert orch.claim_task("w1") is None
        at_ms(clock, item["run_after"])
    assert ceiling_ms(11) == 300_000  # the loop reached the cap
    released = [e for e in events_of(orch, iid) if e["type"] == "released"]
    assert len(released) == 11
    assert all(e["detail"]["outcome"] == "failed" and e["detail"]["status"] == "pending"
               for e in released)
    assert orch.doctor()["ok"]


def test_failed_release_with_retry_in(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1")
    item = orch.release_task(iid, claim["token"], "failed", retry_in=42)
    assert item["status"] == "pending"
    assert item["run_after"] == T0_MS + 42_000
    clock.tick(41.999)
    assert orch.claim_task("w1") is None
    clock.tick(0.001)
    claim = orch.claim_task("w1")
    assert claim["id"] == iid and claim["attempt"] == 2
    item = orch.release_task(iid, claim["token"], "failed", retry_in=0)
    assert item["status"] == "pending" and item["run_after"] == now_ms()
    assert orch.claim_task("w1")["id"] == iid


def test_attempts_exhausted_dead(orch, clock):
    iid = orch.submit_task("x", max_attempts=2)["id"]
    claim = orch.claim_task("w1")
    item = orch.release_task(iid, claim["token"], "failed", error="first")
    assert item["status"] == "pending" and item["attempts"] == 1
    at_ms(clock, item["run_after"])
    claim = orch.claim_task("w1")
    assert claim["attempt"] == 2
    item = orch.release_task(iid, claim["token"], "failed", error="second")
    assert item["status"] == "dead"
    assert item["attempts"] == 2 and item["error"] == "second"
    clock.tick(3600)
    assert orch.claim_task("w1") is None
    last = events_of(orch, iid)[-1]
    assert last["type"] == "released"
    assert last["detail"] == {**last["detail"], "outcome": "failed", "status": "dead"}
    assert orch.doctor()["ok"]


def test_no_retry_fails_at_once(orch, clock):
    iid = orch.submit_task("x", max_attempts=5)["id"]
    claim = orch.claim_task("w1")
    item = orch.release_task(iid, claim["token"], "failed", error="fatal", no_retry=True)
    assert item["status"] == "failed"
    assert item["attempts"] == 1 and item["error"] == "fatal"
    clock.tick(3600)
    assert orch.claim_task("w1") is None


def test_release_cancelled(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1")
    item = orch.release_task(iid, claim["token"], "cancelled")
    assert item["status"] == "cancelled"
    clock.tick(3600)
    assert orch.claim_task("w1") is None


def test_requeue_is_immediate_and_counted(orch, clock):
    iid = orch.submit_task("x", max_attempts=2)["id"]
    first = orch.claim_task("w1")
    clock.tick(2)
    item = orch.release_task(iid, first["token"], "requeue")
    assert item["status"] == "pending"
    assert item["run_after"] == now_ms()
    assert item["attempts"] == 1
    second = orch.claim_task("w2")  # same instant: claimable at once
    assert second["id"] == iid and second["attempt"] == 2
    assert second["fence"] > first["fence"]
    # the requeued claim counted toward max_attempts: this failure is the last
    item = orch.release_task(iid, second["token"], "failed")
    assert item["status"] == "dead"
    assert orch.doctor()["ok"]


# --- cancel ---------------------------------------------------------------------------


def test_cancel_pending(orch, clock):
    iid = orch.submit_task("x")["id"]
    before = n_events(orch)
    item = orch.cancel_task(iid)
    assert item["status"] == "cancelled"
    assert orch.get_task(iid)["status"] == "cancelled"
    assert n_events(orch) == before + 1
    assert types_of(orch, iid)[-1] == "cancelled"
    assert orch.claim_task("w1") is None
    with pytest.raises(Conflict):
        orch.cancel_task(iid)


def test_cancel_running_seen_on_heartbeat_then_failed_release_cancels(orch, clock):
    iid = orch.submit_task("x", max_attempts=5)["id"]
    claim = orch.claim_task("w1", ttl=30)
    assert orch.heartbeat(iid, claim["token"])["cancel_requested"] is False
    item = orch.cancel_task(iid)
    assert item["status"] == "running" and item["cancel_requested"] is True
    assert types_of(orch, iid)[-1] == "cancel_requested"
    n = n_events(orch)
    orch.cancel_task(iid)  # asking again records nothing new
    assert n_events(orch) == n
    clock.tick(1)
    hb = orch.heartbeat(iid, claim["token"])
    assert hb["cancel_requested"] is True
    assert hb["lease_expires_at"] == now_ms() + 30_000
    several = orch.heartbeat(leases=[{"item_id": iid, "token": claim["token"]}])
    assert [x["cancel_requested"] for x in several["leases"]] == [True]
    item = orch.release_task(iid, claim["token"], "failed", error="stopped")
    assert item["status"] == "cancelled"
    clock.tick(3600)
    assert orch.claim_task("w1") is None
    assert orch.doctor()["ok"]


def test_cancel_requested_then_lease_lost_is_cancelled_not_retried(orch, clock):
    iid = orch.submit_task("x", max_attempts=5)["id"]
    orch.claim_task("w1", ttl=5)
    orch.cancel_task(iid)
    clock.tick(6)
    rec = orch.stale_recovery()
    assert [(r["id"], r["status"]) for r in rec["recovered"]] == [(iid, "cancelled")]
    assert orch.get_task(iid)["status"] == "cancelled"
    clock.tick(3600)
    assert orch.claim_task("w1") is None


def test_cancel_requested_survives_takeover(orch, clock):
    """A takeover must not silently drop a cancel request and run the item again."""
    iid = orch.submit_task("x", max_attempts=5)["id"]
    orch.claim_task("w1", ttl=5)
    orch.cancel_task(iid)
    clock.tick(6)
    try:
        claim = orch.claim_task("w2", item_id=iid)
    except Conflict:
        assert orch.get_task(iid)["status"] == "cancelled"
    else:
        assert claim["cancel_requested"] is True, "the cancel request was dropped"
        assert orch.heartbeat(iid, claim["token"])["cancel_requested"] is True


# --- checkpoints ------------------------------------------------------------------------


def test_checkpoint_handed_over_by_requeue(orch, clock):
    iid = orch.submit_task("x")["id"]
    c1 = orch.claim_task("w1")
    r = orch.checkpoint(iid, c1["token"], {"page": 3})
    assert r["id"] == iid and r["fence"] == c1["fence"] and r["checkpoint"] == {"page": 3}
    assert types_of(orch, iid)[-1] == "checkpoint"
    assert orch.get_task(iid)["checkpoint"] == {"page": 3}
    orch.checkpoint(iid, c1["token"], {"page": 7})
    orch.release_task(iid, c1["token"], "requeue")
    c2 = orch.claim_task("w2")
    assert c2["id"] == iid and c2["checkpoint"] == {"page": 7}
    assert c2["attempt"] == 2
    assert orch.doctor()["ok"]


def test_checkpoint_handed_over_after_expiry_and_recovery(orch, clock):
    iid = orch.submit_task("x")["id"]
    c1 = orch.claim_task("w1", ttl=5)
    orch.checkpoint(iid, c1["token"], {"step": [1, 2]})
    clock.tick(6)
    rec = orch.stale_recovery()
    assert rec["count"] == 1
    item = orch.get_task(iid)
    assert item["status"] == "pending" and item["checkpoint"] == {"step": [1, 2]}
    at_ms(clock, item["run_after"])
    c2 = orch.claim_task("w2")
    assert c2["id"] == iid and c2["checkpoint"] == {"step": [1, 2]}
    assert c2["fence"] > c1["fence"]


def test_checkpoint_handed_over_by_takeover(orch, clock):
    iid = orch.submit_task("x")["id"]
    c1 = orch.claim_task("w1", ttl=5)
    orch.checkpoint(iid, c1["token"], "half")
    clock.tick(5.001)
    c2 = orch.claim_task("w2", item_id=iid)
    assert c2["checkpoint"] == "half"


# --- idempotency keys ------------------------------------------------------------------


def test_idempotency_key(orch, clock):
    first = orch.submit_task({"v": 1}, key="job-1", queue="q")
    assert first["created"] is True
    n = n_events(orch)
    again = orch.submit_task({"v": 2}, key="job-1", queue="q", priority=9)
    assert again["created"] is False
    assert again["id"] == first["id"]
    assert again["payload"] == {"v": 1} and again["priority"] == 0
    assert n_events(orch) == n
    assert len(orch.list_tasks(limit=0)) == 1
    # another queue or kind is another key space
    other_q = orch.submit_task({"v": 3}, key="job-1", queue="q2")
    other_k = orch.submit_task({"v": 4}, key="job-1", queue="q", kind="session")
    assert other_q["created"] and other_k["created"]
    assert len({first["id"], other_q["id"], other_k["id"]}) == 3
    # unique forever: also once the item is finished
    claim = orch.claim_task("w1", ["q"])
    orch.release_task(claim["id"], claim["token"], "succeeded")
    late = orch.submit_task({"v": 5}, key="job-1", queue="q")
    assert late["created"] is False and late["id"] == first["id"]
    assert late["status"] == "succeeded"


# --- stale tokens -------------------------------------------------------------------------


def _scenario(orch, clock, name: str) -> tuple[int, str]:
    """Build a state where ``token`` is not the item's live claim."""
    iid = orch.submit_task("x", max_attempts=5)["id"]
    claim = orch.claim_task("w1", ttl=10)
    token = claim["token"]
    if name == "wrong":
        return iid, "not-" + token
    if name == "superseded":
        orch.release_task(iid, token, "requeue")
        orch.claim_task("w2", ttl=10)
    elif name == "taken_over":
        clock.tick(11)
        orch.claim_task("w2", item_id=iid, ttl=10)
    elif name == "recovered":
        clock.tick(11)
        assert orch.stale_recovery()["count"] == 1
    elif name == "expired":
        clock.tick(11)
    elif name == "expired_exactly":
        clock.tick(10)  # the lease ends at now + ttl: at that instant it is over
    elif name == "released":
        orch.release_task(iid, token, "succeeded", result=1)
    return iid, token


SCENARIOS = ["wrong", "superseded", "taken_over", "recovered", "expired", "expired_exactly",
             "released"]
HOLDER_WRITES = {
    "heartbeat": lambda o, i, t: o.heartbeat(i, t),
    "heartbeat_ttl": lambda o, i, t: o.heartbeat(i, t, ttl=60),
    "release_succeeded": lambda o, i, t: o.release_task(i, t, "succeeded", result=2),
    "release_failed": lambda o, i, t: o.release_task(i, t, "failed"),
    "release_requeue": lambda o, i, t: o.release_task(i, t, "requeue"),
    "checkpoint": lambda o, i, t: o.checkpoint(i, t, {"evil": True}),
    "release_and_claim": lambda o, i, t: o.release_and_claim(i, t, "succeeded"),
}


@pytest.mark.parametrize("write", list(HOLDER_WRITES))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stale_token_is_lease_lost_and_changes_nothing(orch, clock, db_path, scenario, write):
    iid, token = _scenario(orch, clock, scenario)
    before_item = orch.get_task(iid)
    before_events = n_events(orch)
    before = snapshot(db_path)
    with pytest.raises(LeaseLost) as exc:
        HOLDER_WRITES[write](orch, iid, token)
    assert exc.value.data.get("item_id") == iid
    assert orch.get_task(iid) == before_item
    assert n_events(orch) == before_events
    assert snapshot(db_path) == before
    assert orch.verify(iid, token)["valid"] is False


def test_expired_lease_cannot_be_revived(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1", ttl=10)
    clock.tick(10.5)
    with pytest.raises(LeaseLost):
        orch.heartbeat(iid, claim["token"], ttl=100)
    n = n_events(orch)
    refused = orch.heartbeat(leases=[{"item_id": iid, "token": claim["token"]}])["leases"]
    assert refused == [{"id": iid, "error": {
        "code": 1001, "reason": "lease_lost",
        "message": f"item {iid}: the lease expired at 2025-01-01T00:00:10.000+00:00"}}]
    assert n_events(orch) == n
    item = orch.get_task(iid)
    assert item["status"] == "running"
    assert item["lease_expires_at"] == T0_MS + 10_000
    assert [r["id"] for r in orch.stale_recovery()["recovered"]] == [iid]


# --- release and claim the next, in one transaction ------------------------------------


def test_release_and_claim_next_like_the_released_claim(orch, clock, db_path):
    a = orch.submit_task("a", queue="q1")["id"]
    b = orch.submit_task("b", queue="q1")["id"]
    orch.submit_task("other queue", queue="q2")
    first = orch.claim_task("w1", ["q1"], ttl=10)
    clock.tick(2)
    commits = _count_commits(orch)
    out = orch.release_and_claim(a, first["token"], "succeeded", result={"ok": 1})
    assert len(commits) == 1  # one transaction
    done, nxt = out["released"], out["next"]
    assert done["id"] == a and done["status"] == "succeeded" and done["result"] == {"ok": 1}
    # the next claim goes like the released one: worker, queue, kind, lease length
    assert nxt["id"] == b and nxt["worker_id"] == "w1" and nxt["queue"] == "q1"
    assert nxt["lease_expires_at"] == T0_MS + 2000 + 10_000 and nxt["attempt"] == 1
    assert nxt["fence"] > first["fence"] and orch.verify(b, nxt["token"])["valid"]
    assert orch.verify(a, first["token"])["valid"] is False
    assert types_of(orch, a) == ["submitted", "claimed", "released"]
    assert types_of(orch, b) == ["submitted", "claimed"]
    # nothing left in q1: released all the same, nothing claimed (q2 is not looked at)
    last = orch.release_and_claim(b, nxt["token"], "failed", error="boom")
    assert last["next"] is None
    assert last["released"]["status"] == "pending" and last["released"]["error"] == "boom"
    assert orch.doctor()["ok"]


def test_release_and_claim_with_its_own_claim_parameters(orch, clock):
    a = orch.submit_task("a", queue="q1")["id"]
    hi = orch.submit_task("hi", queue="q2", priority=9)["id"]
    orch.submit_task("lo", queue="q3")
    sess = orch.start_session("w9", key="s")
    c = orch.claim_task("w1", ["q1"], ttl=10)
    out = orch.release_and_claim(a, c["token"], "succeeded", worker_id="w2",
                                 queues=["q3", "q2"], ttl=60)
    assert out["next"]["id"] == hi and out["next"]["worker_id"] == "w2"
    assert out["next"]["lease_expires_at"] == T0_MS + 60_000
    # kinds: a task's release can claim another kind only when asked to
    out = orch.release_and_claim(hi, out["next"]["token"], "succeeded", queues=["default"])
    assert out["next"] is None
    assert sess["status"] == "running"


def test_release_and_claim_requeue_may_hand_back_the_same_item(orch, clock):
    a = orch.submit_task("a")["id"]
    c = orch.claim_task("w1")
    out = orch.release_and_claim(a, c["token"], "requeue")
    assert out["released"]["status"] == "pending"
    assert out["next"]["id"] == a and out["next"]["attempt"] == 2
    assert out["next"]["fence"] > c["fence"]


def test_release_and_claim_refused_release_claims_nothing(orch, clock, db_path):
    a = orch.submit_task("a")["id"]
    orch.submit_task("b")
    c = orch.claim_task("w1", ttl=5)
    clock.tick(6)  # the lease expired
    before = snapshot(db_path)
    with pytest.raises(LeaseLost):
        orch.release_and_claim(a, c["token"], "succeeded")
    assert snapshot(db_path) == before  # the second item was not claimed either


def _count_commits(orch) -> list[int]:
    """Count the commits of orch's connection (SQLite calls the WAL hook once each)."""
    commits: list[int] = []
    orch.store.conn.set_wal_hook(lambda _conn, _db, _frames: commits.append(1) or 0)
    return commits


# --- heartbeats -----------------------------------------------------------------------


def test_heartbeat_ttl_may_shorten_and_default_is_claim_ttl(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1", ttl=60)
    clock.tick(1)
    hb = orch.heartbeat(iid, claim["token"], ttl=5)
    assert hb["lease_expires_at"] == T0_MS + 1000 + 5000
    assert orch.get_task(iid)["lease_expires_at"] == T0_MS + 6000
    clock.tick(1)
    # without ttl: the claim's ttl, not the last heartbeat's
    hb = orch.heartbeat(iid, claim["token"])
    assert hb["lease_expires_at"] == T0_MS + 2000 + 60_000
    orch.heartbeat(iid, claim["token"], ttl=0.5)
    clock.tick(0.5)
    with pytest.raises(LeaseLost):
        orch.heartbeat(iid, claim["token"])
    assert orch.stale_recovery()["count"] == 1
    assert orch.doctor()["ok"]


def test_heartbeat_of_several_leases_each_on_its_own(orch, clock, db_path):
    ids = [orch.submit_task(i)["id"] for i in range(4)]
    a = orch.claim_task("w1", ttl=10)
    b = orch.claim_task("w2", ttl=30)
    c = orch.claim_task("w1", ttl=10)
    d = orch.claim_task("w1", ttl=1)
    assert [a["id"], b["id"], c["id"], d["id"]] == ids
    orch.release_task(c["id"], c["token"], "requeue")
    c2 = orch.claim_task("w3", ttl=10, item_id=c["id"])  # c's token is superseded
    clock.tick(2)  # d has expired
    untouched = {i: snapshot(db_path)["items"][i - 1] for i in (c["id"], d["id"])}
    n = n_events(orch)
    r = orch.heartbeat(leases=[{"item_id": a["id"], "token": a["token"]},
                               {"item_id": c["id"], "token": c["token"]},
                               {"item_id": 999, "token": a["token"]},
                               {"item_id": b["id"], "token": b["token"]},
                               {"item_id": d["id"], "token": d["token"]}])
    now = now_ms()
    assert [x["id"] for x in r["leases"]] == [a["id"], c["id"], 999, b["id"], d["id"]]
    assert r["leases"][0] == {"id": a["id"], "fence": a["fence"],
                              "lease_expires_at": now + 10_000, "cancel_requested": False}
    assert r["leases"][3]["lease_expires_at"] == now + 30_000  # each its claim's ttl
    assert [x["error"]["reason"] for x in r["leases"] if "error" in x] == \
        ["lease_lost", "not_found", "lease_lost"]
    assert [x["error"]["code"] for x in r["leases"] if "error" in x] == [1001, 1002, 1001]
    assert "not its current claim" in r["leases"][1]["error"]["message"]
    assert "expired" in r["leases"][4]["error"]["message"]
    # the refused leases changed nothing, the others one heartbeat each
    assert n_events(orch) == n + 2
    items = snapshot(db_path)["items"]
    assert {i: items[i - 1] for i in (c["id"], d["id"])} == untouched
    assert orch.verify(c["id"], c2["token"])["valid"]
    assert types_of(orch, a["id"])[-1] == types_of(orch, b["id"])[-1] == "heartbeat"

    clock.tick(1)
    r = orch.heartbeat(leases=[{"item_id": a["id"], "token": a["token"]},
                               {"item_id": b["id"], "token": b["token"]}], ttl=5)
    now = now_ms()
    assert [x["lease_expires_at"] for x in r["leases"]] == [now + 5000, now + 5000]
    # each lease's worker stays registered as live
    assert {"w1", "w2"} <= {w["worker_id"] for w in orch.status()["workers"]}
    assert orch.doctor()["ok"]


def test_heartbeat_refuses_a_worker_name_and_bad_lease_lists(orch, db_path):
    from orchestrator import InvalidInput, LimitExceeded

    orch.submit_task(1)
    c = orch.claim_task("w1", ttl=10)
    before = snapshot(db_path)
    with pytest.raises(InvalidInput, match=r"worker_id: no longer accepted: .*reusing its name"):
        orch._call("heartbeat", {"worker_id": "w1"})
    lease = {"item_id": c["id"], "token": c["token"]}
    for bad, match in [
            ([], "leases: give 1 to 1000 leases"),
            ([lease] * 2, r"leases\[1\].item_id: item 1 is given twice"),
            ([{"item_id": c["id"]}], r"leases\[0\]: expected exactly item_id and token"),
            ([{**lease, "ttl": 3}], r"leases\[0\]: expected exactly item_id and token, not ttl"),
            ([{"item_id": "1", "token": c["token"]}], r"leases\[0\].item_id: expected an"),
            ([{"item_id": c["id"], "token": 7}], r"leases\[0\].token: expected a string"),
            (["1"], r"leases\[0\]: expected an object"),
            ({"item_id": 1}, "leases: expected a list")]:
        with pytest.raises(InvalidInput, match=match):
            orch.heartbeat(leases=bad)
    with pytest.raises(LimitExceeded, match="leases: give 1 to 1000"):
        orch.heartbeat(leases=[{"item_id": i, "token": "t"} for i in range(1, 1002)])
    with pytest.raises(InvalidInput, match="give item_id with token, or leases"):
        orch.heartbeat(c["id"], c["token"], leases=[lease])
    with pytest.raises(InvalidInput):
        orch.heartbeat(c["id"])
    assert snapshot(db_path) == before


# --- stale recovery -------------------------------------------------------------------


def test_stale_recovery_outcomes(orch, clock, db_path):
    idem = orch.submit_task("idem", max_attempts=3)["id"]
    last = orch.submit_task("last", max_attempts=1)["id"]
    unsafe = orch.submit_task("unsafe", effect="unsafe")["id"]
    unlimited = orch.submit_task("unlimited", max_attempts=0)["id"]
    live = orch.submit_task("live")["id"]
    claims = {c["id"]: c for c in (orch.claim_task("w1", ttl=5) for _ in range(4))}
    orch.claim_task("w2", ttl=600)
    assert set(claims) == {idem, last, unsafe, unlimited}
    clock.tick(5.5)
    now = now_ms()

    before = snapshot(db_path)
    dry = orch.stale_recovery(dry_run=True)
    assert dry["dry_run"] is True and dry["count"] == 4
    assert snapshot(db_path) == before  # a dry run changes nothing

    rec = orch.stale_recovery()
    assert rec["dry_run"] is False and rec["count"] == 4
    got = {r["id"]: r for r in rec["recovered"]}
    want = {idem: "pending", last: "dead", unsafe: "unknown", unlimited: "pending"}
    assert {i: r["status"] for i, r in got.items()} == want
    assert {i: r["status"] for i, r in
            ((r["id"], r) for r in dry["recovered"])} == want
    for i, r in got.items():
        assert r["worker_id"] == "w1" and r["fence"] == claims[i]["fence"]
        assert r["reason"] == "lease_expired"
        item = orch.get_task(i)
        assert item["status"] == want[i]
        assert item["lease_expires_at"] is None
        assert item["attempts"] == 1
        ev = events_of(orch, i)[-1]
        assert ev["type"] == "expired" and ev["detail"]["status"] == want[i]
        with pytest.raises(LeaseLost):
            orch.heartbeat(i, claims[i]["token"])
    assert_backoff(orch.get_task(idem), now, 1)
    assert_backoff(orch.get_task(unlimited), now, 1)
    assert orch.get_task(live)["status"] == "running"

    # twice: nothing the second time
    before = snapshot(db_path)
    again = orch.stale_recovery()
    assert again["count"] == 0 and again["recovered"] == []
    assert snapshot(db_path) == before

    # the retried ones come back after their backoff; dead and unknown do not
    clock.tick(1)
    got_back = {orch.claim_task("w3")["id"], orch.claim_task("w3")["id"]}
    assert got_back == {idem, unlimited}
    assert orch.claim_task("w3") is None
    assert orch.doctor()["ok"]


@pytest.mark.parametrize("result,error", [
    (None, None), ('{"pages":3}', None), (None, 'boom "quoted" \\ é\n\t\x01'),
    ('"é"', "x" * 10)])
def test_bulk_recovery_formats_its_events_as_the_general_path(result, error):
    from orchestrator import events as ev
    from orchestrator.rules import expired_detail
    from orchestrator.validate import dump_json
    for status, run_after in (("pending", 1_700_000_000_123), ("unknown", 0), ("dead", -5)):
        new = {"status": status, "run_after": run_after, "result": result, "error": error,
               "lease_expires_at": None, "heartbeat_at": None}
        assert expired_detail(new) == dump_json({**ev.state_of(new, ev.SETTLED),
                                                 "reason": "lease_expired"})


def test_stale_recovery_exact_expiry_agrees_with_holder_check(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1", ttl=10)
    clock.tick(9.999)
    assert orch.stale_recovery()["count"] == 0
    assert orch.verify(iid, claim["token"])["valid"] is True
    clock.tick(0.001)
    assert orch.verify(iid, claim["token"])["valid"] is False
    assert orch.stale_recovery()["count"] == 1


# --- resolve ----------------------------------------------------------------------------


def _unknown_item(orch, clock) -> int:
    iid = orch.submit_task("side effect", effect="unsafe")["id"]
    orch.claim_task("w1", ttl=1)
    clock.tick(2)
    assert orch.stale_recovery()["recovered"][0]["status"] == "unknown"
    return iid


@pytest.mark.parametrize("outcome,status", [("succeeded", "succeeded"), ("failed", "failed"),
                                            ("retry", "pending"), ("cancelled", "cancelled")])
def test_resolve_unknown(orch, clock, outcome, status):
    iid = _unknown_item(orch, clock)
    assert orch.claim_task("w2") is None  # unknown is never claimed blindly
    item = orch.resolve_task(iid, outcome)
    assert item["status"] == status
    assert orch.get_task(iid)["status"] == status
    ev = events_of(orch, iid)[-1]
    assert ev["type"] == "resolved" and ev["detail"]["outcome"] == outcome
    assert ev["detail"]["status"] == status
    claim = orch.claim_task("w2")
    if outcome == "retry":
        assert item["run_after"] == now_ms()
        assert claim is not None and claim["id"] == iid and claim["attempt"] == 2
    else:
        assert claim is None
    with pytest.raises(Conflict):
        orch.resolve_task(iid, outcome)
    assert orch.doctor()["ok"]


def test_resolve_conflict_on_non_unknown(orch, clock, db_path):
    pending = orch.submit_task("p")["id"]
    running = orch.submit_task("r")["id"]
    done = orch.submit_task("d")["id"]
    c = orch.claim_task("w1", item_id=done)
    orch.release_task(done, c["token"], "succeeded")
    orch.claim_task("w1", item_id=running)
    before = snapshot(db_path)
    for iid, status in ((pending, "pending"), (running, "running"), (done, "succeeded")):
        with pytest.raises(Conflict) as exc:
            orch.resolve_task(iid, "succeeded")
        assert status in str(exc.value)
    assert snapshot(db_path) == before
    with pytest.raises(NotFound):
        orch.resolve_task(9999, "retry")


# --- claim by id ------------------------------------------------------------------------


def test_claim_item_ignores_run_after_and_priority(orch, clock):
    delayed = orch.submit_task("later", delay=3600, priority=-5)["id"]
    orch.submit_task("urgent", priority=50)
    claim = orch.claim_task("w1", item_id=delayed)
    assert claim["id"] == delayed and claim["status"] == "running"
    assert claim["attempt"] == 1


def test_claim_item_live_lease_conflict_names_holder(orch, clock, db_path):
    iid = orch.submit_task("x")["id"]
    orch.claim_task("holder-7", ttl=10)
    clock.tick(9.9)
    before = snapshot(db_path)
    with pytest.raises(Conflict) as exc:
        orch.claim_task("w2", item_id=iid)
    assert "holder-7" in str(exc.value)
    assert exc.value.data["worker_id"] == "holder-7"
    assert exc.value.data["lease_expires_at"] == T0_MS + 10_000
    assert snapshot(db_path) == before


def test_claim_item_takes_over_expired_lease(orch, clock):
    iid = orch.submit_task("x")["id"]
    old = orch.claim_task("w1", ttl=10)
    clock.tick(11)
    new = orch.claim_task("w2", item_id=iid, ttl=20)
    assert new["id"] == iid and new["worker_id"] == "w2"
    assert new["fence"] > old["fence"]
    assert new["attempt"] == 2
    assert new["lease_expires_at"] == now_ms() + 20_000
    assert new["token"] != old["token"]
    with pytest.raises(LeaseLost):
        orch.release_task(iid, old["token"], "succeeded")
    assert orch.verify(iid, old["token"])["valid"] is False
    assert orch.verify(iid, new["token"]) == {"valid": True, "fence": new["fence"],
                                             "status": "running"}
    evs = events_of(orch, iid)
    assert [e["type"] for e in evs] == ["submitted", "claimed", "taken_over", "claimed"]
    taken = evs[2]["detail"]
    assert taken["previous_worker"] == "w1" and taken["previous_fence"] == old["fence"]
    assert taken["by"] == "w2"
    assert orch.stale_recovery()["count"] == 0  # nothing left to recover
    orch.release_task(iid, new["token"], "succeeded")
    assert orch.doctor()["ok"]


def test_claim_item_not_found(orch, clock):
    with pytest.raises(NotFound):
        orch.claim_task("w1", item_id=424242)


@pytest.mark.parametrize("status", ["succeeded", "failed", "dead", "cancelled", "unknown"])
def test_claim_item_finished_is_conflict(orch, clock, status):
    iid = orch.submit_task("x", max_attempts=1,
                           effect="unsafe" if status == "unknown" else None)["id"]
    if status == "cancelled":
        orch.cancel_task(iid)
    else:
        c = orch.claim_task("w1", ttl=1)
        if status == "unknown":
            clock.tick(2)
            orch.stale_recovery()
        else:
            outcome = {"succeeded": "succeeded", "failed": "failed", "dead": "failed"}[status]
            orch.release_task(iid, c["token"], outcome, no_retry=status == "failed" or None)
    assert orch.get_task(iid)["status"] == status
    with pytest.raises(Conflict):
        orch.claim_task("w2", item_id=iid)


# --- fences -------------------------------------------------------------------------------


def test_fences_strictly_increase_across_claims_and_restarts(db_path):
    fences = []
    with freeze_time(T0) as clock:
        with Orchestrator(db_path) as o:
            ids = [o.submit_task(i)["id"] for i in range(3)]
            for _ in range(3):
                fences.append(o.claim_task("w1", ttl=5)["fence"])
            clock.tick(6)
            fences.append(o.claim_task("w2", item_id=ids[0])["fence"])  # takeover
            o.stale_recovery()
        with Orchestrator(db_path) as o:  # a restart
            clock.tick(3600)
            while (c := o.claim_task("w3")) is not None:
                fences.append(c["fence"])
                o.release_task(c["id"], c["token"], "requeue", retry_in=1)
            assert o.status()["fence"] == fences[-1]
            claimed = [e["fence"] for e in o.list_events(limit=0) if e["type"] == "claimed"]
            assert o.doctor()["ok"]
    assert len(fences) == 6
    assert all(a < b for a, b in itertools.pairwise(fences)), fences
    assert claimed == fences


# --- verify, status, lists ------------------------------------------------------------------


def test_verify(orch, clock):
    iid = orch.submit_task("x")["id"]
    claim = orch.claim_task("w1", ttl=10)
    assert orch.verify(iid, claim["token"]) == {"valid": True, "fence": claim["fence"],
                                               "status": "running"}
    assert orch.verify(iid, claim["token"] + "x")["valid"] is False
    other = orch.submit_task("y")["id"]
    assert orch.verify(other, claim["token"]) == {"valid": False, "fence": None,
                                                 "status": "pending"}
    with pytest.raises(NotFound):
        orch.verify(9999, claim["token"])


def test_status_workers_and_expired_leases(orch, clock):
    a, b, c, d = (orch.submit_task(i)["id"] for i in range(4))
    ca = orch.claim_task("w1", ttl=10)
    cb = orch.claim_task("w1", ttl=100)
    cc = orch.claim_task("w2", ttl=5)
    clock.tick(6)
    st = orch.status()
    assert st["now"] == now_ms()
    assert st["counts"] == {"pending": 1, "running": 3, "succeeded": 0, "failed": 0,
                            "dead": 0, "cancelled": 0, "unknown": 0}
    assert st["fence"] == cc["fence"] > cb["fence"] > ca["fence"]
    workers = {w["worker_id"]: w for w in st["workers"]}
    assert set(workers) == {"w1"}  # w2's only lease expired
    assert workers["w1"]["holding"] == [a, b]
    assert workers["w1"]["lease_expires_at"] == cb["lease_expires_at"]
    assert len(st["expired_leases"]) == 1
    assert st["expired_leases"][0].items() >= {
        "id": c, "kind": "task", "queue": "default", "worker_id": "w2",
        "fence": cc["fence"], "lease_expires_at": T0_MS + 5000}.items()
    orch.stale_recovery()
    st = orch.status()
    assert st["expired_leases"] == []
    assert st["counts"]["pending"] == 2 and st["counts"]["running"] == 2
    clock.tick(5)  # a's lease has ended too; w1 is still live through b
    st = orch.status()
    assert [x["id"] for x in st["expired_leases"]] == [a]
    assert [w["worker_id"] for w in st["workers"]] == ["w1"]
    clock.tick(100)
    assert orch.status()["workers"] == []
    assert ca["id"] == a and d not in (ca["id"], cb["id"], cc["id"])


def test_submit_many(orch, clock, db_path):
    got = orch.submit_many([
        {"payload": {"n": 1}, "queue": "q", "priority": 2},
        {"payload": {"n": 2}, "key": "k"},
        {"payload": {"n": 3}, "key": "k"},
        {"delay": 5},
    ])
    assert [g["created"] for g in got] == [True, True, False, True]
    assert got[1]["id"] == got[2]["id"]
    assert got[0]["queue"] == "q" and got[0]["priority"] == 2 and got[0]["payload"] == {"n": 1}
    assert got[2]["payload"] == {"n": 2}
    assert got[3]["payload"] is None and got[3]["run_after"] == T0_MS + 5000
    assert len(orch.list_tasks(limit=0)) == 3
    # one transaction: a bad item makes nothing at all
    before = snapshot(db_path)
    with pytest.raises(NotFound):
        orch.submit_many([{"payload": "fine"}, {"payload": "orphan", "parent_id": 9999}])
    assert snapshot(db_path) == before
    assert orch.doctor()["ok"]


def test_submit_many_answers_and_events_equal_one_by_one_submits(tmp_path, clock):
    """The bulk path formats its events and answers itself: they must be exactly what
    submit_task makes, for every queue character, kind, effect and number."""
    items = [{"payload": {"n": i, "s": "é\"\\"}, "queue": q, "priority": p,
              "max_attempts": m, "delay": d, "effect": e, "kind": k}
             for i, (q, p, m, d, e, k) in enumerate([
                 ("a.b_c:d-9", -(2**63), 0, 0, "unsafe", "task"),
                 ("Q", 2**63 - 1, None, 1.5, None, "session"),
                 ("x" * 128, 0, 1_000_000, 0, "idempotent", "task")])]
    with Orchestrator(tmp_path / "bulk.db") as bulk, Orchestrator(tmp_path / "one.db") as one:
        many = bulk.submit_many(items)
        singles = [one.submit_task(**it) for it in items]
        assert many == singles
        assert bulk.list_events(limit=0) == one.list_events(limit=0)  # details, hashes
        assert bulk.doctor()["ok"]


def test_list_tasks(orch, clock):
    ids = [orch.submit_task(i, queue="a" if i % 2 else "b")["id"] for i in range(6)]
    s = orch.submit_task("s", kind="session")["id"]
    c = orch.claim_task("w1", ["a"])
    assert c["id"] == ids[1]
    everything = orch.list_tasks()
    assert [i["id"] for i in everything] == [s, *reversed(ids)]
    assert [i["id"] for i in orch.list_tasks(queue="a")] == [ids[5], ids[3], ids[1]]
    assert [i["id"] for i in orch.list_tasks(status="running")] == [ids[1]]
    assert [i["id"] for i in orch.list_tasks(status="pending", queue="a")] == [ids[5], ids[3]]
    assert [i["id"] for i in orch.list_tasks(kind="session")] == [s]
    assert [i["id"] for i in orch.list_tasks(limit=2)] == [s, ids[5]]
    assert orch.list_tasks(status="dead") == []
    assert all("token_hash" not in i for i in everything)


def test_list_tasks_default_limit_100_and_zero_for_all(orch, clock):
    orch.submit_many([{"payload": i} for i in range(105)])
    assert len(orch.list_tasks()) == 100
    assert len(orch.list_tasks(limit=0)) == 105
    assert orch.list_tasks()[0]["payload"] == 104


def test_list_events(orch, clock):
    a = orch.submit_task("a")["id"]
    b = orch.submit_task("b")["id"]
    c = orch.claim_task("w1")
    orch.heartbeat(a, c["token"])
    orch.release_task(a, c["token"], "succeeded")
    evs = orch.list_events()
    assert [e["seq"] for e in evs] == [1, 2, 3, 4, 5]
    assert [(e["item_id"], e["type"]) for e in evs] == [
        (a, "submitted"), (b, "submitted"), (a, "claimed"), (a, "heartbeat"), (a, "released")]
    assert [e["seq"] for e in orch.list_events(since=3)] == [4, 5]
    assert orch.list_events(since=5) == []
    assert [e["seq"] for e in orch.list_events(item_id=a)] == [1, 3, 4, 5]
    assert [e["seq"] for e in orch.list_events(item_id=a, since=3)] == [4, 5]
    assert [e["seq"] for e in orch.list_events(item_id=b)] == [2]
    assert [e["seq"] for e in orch.list_events(limit=2)] == [1, 2]
    assert [e["seq"] for e in orch.list_events(since=1, limit=2)] == [2, 3]
    e = evs[2]
    assert e["at"] == T0_MS and e["worker_id"] == "w1" and e["fence"] == c["fence"]
    assert isinstance(e["detail"], dict) and isinstance(e["hash"], str)
    assert evs[3]["prev_hash"] == evs[2]["hash"]


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


# --- a property: any sequence of valid operations keeps the file sound ------------------------

WORKERS = st.sampled_from(["w1", "w2", "w3"])
OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(-2, 2), st.sampled_from(["default", "q2"]),
              st.booleans(), st.integers(0, 3), st.sampled_from([None, "k1", "k2"])),
    st.tuples(st.just("claim"), WORKERS, st.sampled_from([1, 5, 30])),
    st.tuples(st.just("claim_item"), st.integers(0, 9), WORKERS),
    st.tuples(st.just("heartbeat"), st.integers(0, 9), st.sampled_from([None, 2, 40])),
    st.tuples(st.just("heartbeat_many"), st.lists(st.integers(0, 9), min_size=1, max_size=4),
              st.sampled_from([None, 2, 40])),
    st.tuples(st.just("release"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "cancelled", "requeue"])),
    st.tuples(st.just("release_next"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "cancelled", "requeue"])),
    st.tuples(st.just("checkpoint"), st.integers(0, 9)),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("resolve"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "retry", "cancelled"])),
    st.tuples(st.just("recover"), st.booleans()),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3, 10, 60, 400])),
)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=1, max_size=40))
def test_random_operations_keep_invariants(ops):
    with tempfile.TemporaryDirectory() as tmp, freeze_time(T0) as clock, \
            Orchestrator(Path(tmp) / "p.db") as o:
        items: list[int] = []
        claims: list[dict] = []  # every claim ever handed out, in order
        latest: dict[int, str] = {}  # item -> token of its latest claim
        for op in ops:
            name, args = op[0], op[1:]
            n = n_events(o)
            try:
                if name == "submit":
                    prio, queue, unsafe, max_attempts, key = args
                    r = o.submit_task(prio, priority=prio, queue=queue, key=key,
                                      max_attempts=max_attempts,
                                      effect="unsafe" if unsafe else None)
                    if r["created"]:
                        items.append(r["id"])
                elif name == "claim":
                    worker, ttl = args
                    c = o.claim_task(worker, ["default", "q2"], ttl=ttl)
                    if c is not None:
                        claims.append(c)
                        latest[c["id"]] = c["token"]
                elif name == "claim_item" and items:
                    c = o.claim_task(args[1], item_id=items[args[0] % len(items)])
                    claims.append(c)
                    latest[c["id"]] = c["token"]
                elif name in ("heartbeat", "release", "checkpoint") and claims:
                    c = claims[args[0] % len(claims)]
                    if name == "heartbeat":
                        o.heartbeat(c["id"], c["token"], ttl=args[1])
                    elif name == "release":
                        o.release_task(c["id"], c["token"], args[1])
                    else:
                        o.checkpoint(c["id"], c["token"], {"n": n})
                elif name == "release_next" and claims:
                    c = claims[args[0] % len(claims)]
                    nxt = o.release_and_claim(c["id"], c["token"], args[1],
                                              queues=["default", "q2"])["next"]
                    if nxt is not None:
                        claims.append(nxt)
                        latest[nxt["id"]] = nxt["token"]
                elif name == "heartbeat_many" and claims:
                    picked = list(dict.fromkeys(claims[i % len(claims)]["id"] for i in args[0]))
                    tokens = {c["id"]: c["token"] for c in claims}  # the latest of each
                    r = o.heartbeat(leases=[{"item_id": i, "token": tokens[i]} for i in picked],
                                    ttl=args[1])
                    assert [x["id"] for x in r["leases"]] == picked
                    extended = sum("error" not in x for x in r["leases"])
                    assert n_events(o) == n + extended  # a refused lease records nothing
                elif name in ("cancel", "resolve") and items:
                    iid = items[args[0] % len(items)]
                    if name == "cancel":
                        o.cancel_task(iid)
                    else:
                        o.resolve_task(iid, args[1])
                elif name == "recover":
                    o.stale_recovery(dry_run=args[0])
                elif name == "tick":
                    clock.tick(args[0])
            except (LeaseLost, Conflict):
                assert n_events(o) == n  # a refused operation records nothing
            # at most the latest claim of an item is valid, and only while its lease lives
            now = now_ms()
            for c in claims:
                item = o.get_task(c["id"])
                live = (latest[c["id"]] == c["token"] and item["status"] == "running"
                        and item["lease_expires_at"] > now)
                assert o.verify(c["id"], c["token"])["valid"] is live
        fences = [c["fence"] for c in claims]
        assert all(a < b for a, b in itertools.pairwise(fences)), fences
        report = o.doctor()
        assert report["ok"], report["problems"]
