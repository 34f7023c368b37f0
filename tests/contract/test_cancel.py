"""Cancelling: a pending item is cancelled at once; a running one is asked to stop, sees
it on its next heartbeat, and is neither retried nor run again, whatever becomes of its
lease."""

from __future__ import annotations

import pytest
from conftest import n_events, types_of

from orchestrator import Conflict
from orchestrator.clock import now_ms


def test_cancel_pending(api, clock):
    iid = api.submit_task("x")["id"]
    before = n_events(api)
    item = api.cancel_task(iid)
    assert item["status"] == "cancelled"
    assert api.get_task(iid)["status"] == "cancelled"
    assert n_events(api) == before + 1
    assert types_of(api, iid)[-1] == "cancelled"
    assert api.claim_task("w1") is None
    with pytest.raises(Conflict):
        api.cancel_task(iid)


def test_cancel_running_seen_on_heartbeat_then_failed_release_cancels(api, clock):
    iid = api.submit_task("x", max_attempts=5)["id"]
    claim = api.claim_task("w1", ttl=30)
    assert api.heartbeat(iid, claim["token"])["cancel_requested"] is False
    item = api.cancel_task(iid)
    assert item["status"] == "running" and item["cancel_requested"] is True
    assert types_of(api, iid)[-1] == "cancel_requested"
    n = n_events(api)
    api.cancel_task(iid)  # asking again records nothing new
    assert n_events(api) == n
    clock.tick(1)
    hb = api.heartbeat(iid, claim["token"])
    assert hb["cancel_requested"] is True
    assert hb["lease_expires_at"] == now_ms() + 30_000
    several = api.heartbeat(leases=[{"item_id": iid, "token": claim["token"]}])
    assert [x["cancel_requested"] for x in several["leases"]] == [True]
    item = api.release_task(iid, claim["token"], "failed", error="stopped")
    assert item["status"] == "cancelled"
    clock.tick(3600)
    assert api.claim_task("w1") is None
    assert api.doctor()["ok"]


def test_cancel_requested_then_lease_lost_is_cancelled_not_retried(api, clock):
    iid = api.submit_task("x", max_attempts=5)["id"]
    api.claim_task("w1", ttl=5)
    api.cancel_task(iid)
    clock.tick(6)
    rec = api.stale_recovery()
    assert [(r["id"], r["status"]) for r in rec["recovered"]] == [(iid, "cancelled")]
    assert api.get_task(iid)["status"] == "cancelled"
    clock.tick(3600)
    assert api.claim_task("w1") is None


def test_cancel_requested_survives_takeover(api, clock):
    """A takeover must not silently drop a cancel request and run the item again."""
    iid = api.submit_task("x", max_attempts=5)["id"]
    api.claim_task("w1", ttl=5)
    api.cancel_task(iid)
    clock.tick(6)
    try:
        claim = api.claim_task("w2", item_id=iid)
    except Conflict:
        assert api.get_task(iid)["status"] == "cancelled"
    else:
        assert claim["cancel_requested"] is True, "the cancel request was dropped"
        assert api.heartbeat(iid, claim["token"])["cancel_requested"] is True
