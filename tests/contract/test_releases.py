"""Releasing: what each outcome leaves (succeeded; failed, retried with exponential
backoff or not at all; cancelled; requeue), the checkpoint handed to the next holder,
and release_and_claim, which releases and claims the next item in one transaction."""

from __future__ import annotations

import pytest
from conftest import T0_MS, assert_backoff, at_ms, ceiling_ms, events_of, types_of

from orchestrator import LeaseLost
from orchestrator.clock import now_ms


def test_submit_claim_heartbeat_release_succeeded(api, clock):
    item = api.submit_task({"n": 1}, queue="q1")
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
    claim = api.claim_task("w1", ["q1"], ttl=10)
    assert claim["id"] == iid
    assert claim["status"] == "running"
    assert claim["attempt"] == 1 and claim["attempts"] == 1
    assert claim["worker_id"] == "w1"
    assert claim["fence"] == 2  # the seq of its 'claimed' event, after 'submitted' (1)
    assert isinstance(claim["token"], str) and len(claim["token"]) >= 16
    assert claim["lease_expires_at"] == T0_MS + 1000 + 10_000
    assert claim["payload"] == {"n": 1} and claim["checkpoint"] is None
    assert claim["kind"] == "task" and claim["queue"] == "q1" and claim["parent_id"] is None
    assert api.verify(iid, claim["token"]) == {"valid": True, "fence": 2, "status": "running"}
    # nothing else to claim
    assert api.claim_task("w2", ["q1"]) is None

    clock.tick(4)
    hb = api.heartbeat(iid, claim["token"])
    assert hb.items() >= {"id": iid, "fence": 2, "lease_expires_at": T0_MS + 5000 + 10_000,
                          "cancel_requested": False}.items()
    got = api.get_task(iid)
    assert got["lease_expires_at"] == T0_MS + 15_000
    assert got["heartbeat_at"] == T0_MS + 5000

    clock.tick(1)
    done = api.release_task(iid, claim["token"], "succeeded", result={"pages": 3})
    assert done["status"] == "succeeded"
    assert done["result"] == {"pages": 3}
    assert done["error"] is None
    assert done["lease_expires_at"] is None
    # the last holder is still named
    assert done["worker_id"] == "w1" and done["fence"] == 2
    assert api.get_task(iid) == done
    assert api.verify(iid, claim["token"]) == {"valid": False, "fence": 2,
                                               "status": "succeeded"}
    assert api.claim_task("w1", ["q1"]) is None

    evs = events_of(api, iid)
    assert [e["type"] for e in evs] == ["submitted", "claimed", "heartbeat", "released"]
    assert [e["at"] for e in evs] == [T0_MS, T0_MS + 1000, T0_MS + 5000, T0_MS + 6000]
    assert evs[1]["worker_id"] == "w1" and evs[1]["fence"] == 2 == evs[1]["seq"]
    assert evs[3]["detail"]["outcome"] == "succeeded"
    assert evs[3]["detail"]["status"] == "succeeded"
    assert api.doctor()["ok"]


def test_failed_release_backs_off_exponentially(api, clock):
    iid = api.submit_task("x", max_attempts=0)["id"]  # unlimited: reach the cap
    for attempt in range(1, 12):
        claim = api.claim_task("w1")
        assert claim["id"] == iid and claim["attempt"] == attempt
        clock.tick(0.25)
        now = now_ms()
        item = api.release_task(iid, claim["token"], "failed", error=f"boom {attempt}")
        assert item["status"] == "pending"
        assert item["attempts"] == attempt
        assert item["error"] == f"boom {attempt}"
        assert item["lease_expires_at"] is None
        assert_backoff(item, now, attempt)
        # not claimable before run_after, claimable at it
        at_ms(clock, item["run_after"] - 1)
        assert api.claim_task("w1") is None
        at_ms(clock, item["run_after"])
    assert ceiling_ms(11) == 300_000  # the loop reached the cap
    released = [e for e in events_of(api, iid) if e["type"] == "released"]
    assert len(released) == 11
    assert all(e["detail"]["outcome"] == "failed" and e["detail"]["status"] == "pending"
               for e in released)
    assert api.doctor()["ok"]


def test_failed_release_with_retry_in(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1")
    item = api.release_task(iid, claim["token"], "failed", retry_in=42)
    assert item["status"] == "pending"
    assert item["run_after"] == T0_MS + 42_000
    clock.tick(41.999)
    assert api.claim_task("w1") is None
    clock.tick(0.001)
    claim = api.claim_task("w1")
    assert claim["id"] == iid and claim["attempt"] == 2
    item = api.release_task(iid, claim["token"], "failed", retry_in=0)
    assert item["status"] == "pending" and item["run_after"] == now_ms()
    assert api.claim_task("w1")["id"] == iid


def test_attempts_exhausted_dead(api, clock):
    iid = api.submit_task("x", max_attempts=2)["id"]
    claim = api.claim_task("w1")
    item = api.release_task(iid, claim["token"], "failed", error="first")
    assert item["status"] == "pending" and item["attempts"] == 1
    at_ms(clock, item["run_after"])
    claim = api.claim_task("w1")
    assert claim["attempt"] == 2
    item = api.release_task(iid, claim["token"], "failed", error="second")
    assert item["status"] == "dead"
    assert item["attempts"] == 2 and item["error"] == "second"
    clock.tick(3600)
    assert api.claim_task("w1") is None
    last = events_of(api, iid)[-1]
    assert last["type"] == "released"
    assert last["detail"] == {**last["detail"], "outcome": "failed", "status": "dead"}
    assert api.doctor()["ok"]


def test_no_retry_fails_at_once(api, clock):
    iid = api.submit_task("x", max_attempts=5)["id"]
    claim = api.claim_task("w1")
    item = api.release_task(iid, claim["token"], "failed", error="fatal", no_retry=True)
    assert item["status"] == "failed"
    assert item["attempts"] == 1 and item["error"] == "fatal"
    clock.tick(3600)
    assert api.claim_task("w1") is None


def test_release_cancelled(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1")
    item = api.release_task(iid, claim["token"], "cancelled")
    assert item["status"] == "cancelled"
    clock.tick(3600)
    assert api.claim_task("w1") is None


def test_requeue_is_immediate_and_counted(api, clock):
    iid = api.submit_task("x", max_attempts=2)["id"]
    first = api.claim_task("w1")
    clock.tick(2)
    item = api.release_task(iid, first["token"], "requeue")
    assert item["status"] == "pending"
    assert item["run_after"] == now_ms()
    assert item["attempts"] == 1
    second = api.claim_task("w2")  # same instant: claimable at once
    assert second["id"] == iid and second["attempt"] == 2
    assert second["fence"] > first["fence"]
    # the requeued claim counted toward max_attempts: this failure is the last
    item = api.release_task(iid, second["token"], "failed")
    assert item["status"] == "dead"
    assert api.doctor()["ok"]


def test_checkpoint_handed_over_by_requeue(api, clock):
    iid = api.submit_task("x")["id"]
    c1 = api.claim_task("w1")
    r = api.checkpoint(iid, c1["token"], {"page": 3})
    assert r["id"] == iid and r["fence"] == c1["fence"] and r["checkpoint"] == {"page": 3}
    assert types_of(api, iid)[-1] == "checkpoint"
    assert api.get_task(iid)["checkpoint"] == {"page": 3}
    api.checkpoint(iid, c1["token"], {"page": 7})
    api.release_task(iid, c1["token"], "requeue")
    c2 = api.claim_task("w2")
    assert c2["id"] == iid and c2["checkpoint"] == {"page": 7}
    assert c2["attempt"] == 2
    assert api.doctor()["ok"]


def test_release_and_claim_next_like_the_released_claim(api, clock, store):
    a = api.submit_task("a", queue="q1")["id"]
    b = api.submit_task("b", queue="q1")["id"]
    api.submit_task("other queue", queue="q2")
    first = api.claim_task("w1", ["q1"], ttl=10)
    clock.tick(2)
    commits = store.commits(api)
    out = api.release_and_claim(a, first["token"], "succeeded", result={"ok": 1})
    assert len(commits) == 1  # one transaction
    done, nxt = out["released"], out["next"]
    assert done["id"] == a and done["status"] == "succeeded" and done["result"] == {"ok": 1}
    # the next claim goes like the released one: worker, queue, kind, lease length
    assert nxt["id"] == b and nxt["worker_id"] == "w1" and nxt["queue"] == "q1"
    assert nxt["lease_expires_at"] == T0_MS + 2000 + 10_000 and nxt["attempt"] == 1
    assert nxt["fence"] > first["fence"] and api.verify(b, nxt["token"])["valid"]
    assert api.verify(a, first["token"])["valid"] is False
    assert types_of(api, a) == ["submitted", "claimed", "released"]
    assert types_of(api, b) == ["submitted", "claimed"]
    # nothing left in q1: released all the same, nothing claimed (q2 is not looked at)
    last = api.release_and_claim(b, nxt["token"], "failed", error="boom")
    assert last["next"] is None
    assert last["released"]["status"] == "pending" and last["released"]["error"] == "boom"
    assert api.doctor()["ok"]


def test_release_and_claim_with_its_own_claim_parameters(api, clock):
    a = api.submit_task("a", queue="q1")["id"]
    hi = api.submit_task("hi", queue="q2", priority=9)["id"]
    api.submit_task("lo", queue="q3")
    sess = api.start_session("w9", key="s")
    c = api.claim_task("w1", ["q1"], ttl=10)
    out = api.release_and_claim(a, c["token"], "succeeded", worker_id="w2",
                                queues=["q3", "q2"], ttl=60)
    assert out["next"]["id"] == hi and out["next"]["worker_id"] == "w2"
    assert out["next"]["lease_expires_at"] == T0_MS + 60_000
    # kinds: a task's release can claim another kind only when asked to
    out = api.release_and_claim(hi, out["next"]["token"], "succeeded", queues=["default"])
    assert out["next"] is None
    assert sess["status"] == "running"


def test_release_and_claim_requeue_may_hand_back_the_same_item(api, clock):
    a = api.submit_task("a")["id"]
    c = api.claim_task("w1")
    out = api.release_and_claim(a, c["token"], "requeue")
    assert out["released"]["status"] == "pending"
    assert out["next"]["id"] == a and out["next"]["attempt"] == 2
    assert out["next"]["fence"] > c["fence"]


def test_release_and_claim_refused_release_claims_nothing(api, clock, store):
    a = api.submit_task("a")["id"]
    api.submit_task("b")
    c = api.claim_task("w1", ttl=5)
    clock.tick(6)  # the lease expired
    before = store.snapshot()
    with pytest.raises(LeaseLost):
        api.release_and_claim(a, c["token"], "succeeded")
    assert store.snapshot() == before  # the second item was not claimed either
