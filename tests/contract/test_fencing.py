"""Fencing: a token is good only while it names the item's current, live claim; every
write with any other (wrong, superseded, taken over, recovered, expired, released) is
LEASE_LOST and changes nothing; an expired lease is taken over, never revived; fences
only grow, across restarts; tokens are compared in constant time."""

from __future__ import annotations

import hmac
import itertools

import pytest
from conftest import T0_MS, events_of, n_events

from orchestrator import LeaseLost, NotFound
from orchestrator.clock import now_ms


def _scenario(api, clock, name: str) -> tuple[int, str]:
    """Build a state where ``token`` is not the item's live claim."""
    iid = api.submit_task("x", max_attempts=5)["id"]
    claim = api.claim_task("w1", ttl=10)
    token = claim["token"]
    if name == "wrong":
        return iid, "not-" + token
    if name == "superseded":
        api.release_task(iid, token, "requeue")
        api.claim_task("w2", ttl=10)
    elif name == "taken_over":
        clock.tick(11)
        api.claim_task("w2", item_id=iid, ttl=10)
    elif name == "recovered":
        clock.tick(11)
        assert api.stale_recovery()["count"] == 1
    elif name == "expired":
        clock.tick(11)
    elif name == "expired_exactly":
        clock.tick(10)  # the lease ends at now + ttl: at that instant it is over
    elif name == "released":
        api.release_task(iid, token, "succeeded", result=1)
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
def test_stale_token_is_lease_lost_and_changes_nothing(api, clock, store, scenario, write):
    iid, token = _scenario(api, clock, scenario)
    before_item = api.get_task(iid)
    before_events = n_events(api)
    before = store.snapshot()
    with pytest.raises(LeaseLost) as exc:
        HOLDER_WRITES[write](api, iid, token)
    assert exc.value.data.get("item_id") == iid
    assert api.get_task(iid) == before_item
    assert n_events(api) == before_events
    assert store.snapshot() == before
    assert api.verify(iid, token)["valid"] is False


def test_expired_lease_cannot_be_revived(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1", ttl=10)
    clock.tick(10.5)
    with pytest.raises(LeaseLost):
        api.heartbeat(iid, claim["token"], ttl=100)
    n = n_events(api)
    refused = api.heartbeat(leases=[{"item_id": iid, "token": claim["token"]}])["leases"]
    assert refused == [{"id": iid, "error": {
        "code": 1001, "reason": "lease_lost",
        "message": f"item {iid}: the lease expired at 2025-01-01T00:00:10.000+00:00"}}]
    assert n_events(api) == n
    item = api.get_task(iid)
    assert item["status"] == "running"
    assert item["lease_expires_at"] == T0_MS + 10_000
    assert [r["id"] for r in api.stale_recovery()["recovered"]] == [iid]


def test_claim_item_takes_over_expired_lease(api, clock):
    iid = api.submit_task("x")["id"]
    old = api.claim_task("w1", ttl=10)
    clock.tick(11)
    new = api.claim_task("w2", item_id=iid, ttl=20)
    assert new["id"] == iid and new["worker_id"] == "w2"
    assert new["fence"] > old["fence"]
    assert new["attempt"] == 2
    assert new["lease_expires_at"] == now_ms() + 20_000
    assert new["token"] != old["token"]
    with pytest.raises(LeaseLost):
        api.release_task(iid, old["token"], "succeeded")
    assert api.verify(iid, old["token"])["valid"] is False
    assert api.verify(iid, new["token"]) == {"valid": True, "fence": new["fence"],
                                             "status": "running"}
    evs = events_of(api, iid)
    assert [e["type"] for e in evs] == ["submitted", "claimed", "taken_over", "claimed"]
    taken = evs[2]["detail"]
    assert taken["previous_worker"] == "w1" and taken["previous_fence"] == old["fence"]
    assert taken["by"] == "w2"
    assert api.stale_recovery()["count"] == 0  # nothing left to recover
    api.release_task(iid, new["token"], "succeeded")
    assert api.doctor()["ok"]


def test_checkpoint_handed_over_by_takeover(api, clock):
    iid = api.submit_task("x")["id"]
    c1 = api.claim_task("w1", ttl=5)
    api.checkpoint(iid, c1["token"], "half")
    clock.tick(5.001)
    c2 = api.claim_task("w2", item_id=iid)
    assert c2["checkpoint"] == "half"


def test_fences_strictly_increase_across_claims_and_restarts(store, clock):
    fences = []
    with store.open() as o:
        ids = [o.submit_task(i)["id"] for i in range(3)]
        for _ in range(3):
            fences.append(o.claim_task("w1", ttl=5)["fence"])
        clock.tick(6)
        fences.append(o.claim_task("w2", item_id=ids[0])["fence"])  # takeover
        o.stale_recovery()
    with store.open() as o:  # a restart
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


def test_verify(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1", ttl=10)
    assert api.verify(iid, claim["token"]) == {"valid": True, "fence": claim["fence"],
                                               "status": "running"}
    assert api.verify(iid, claim["token"] + "x")["valid"] is False
    other = api.submit_task("y")["id"]
    assert api.verify(other, claim["token"]) == {"valid": False, "fence": None,
                                                 "status": "pending"}
    with pytest.raises(NotFound):
        api.verify(9999, claim["token"])


def test_tokens_are_compared_in_constant_time(api, monkeypatch):
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    api.submit_task("x")
    c = api.claim_task("w1")
    wrong = "not-" + c["token"]
    with pytest.raises(LeaseLost):
        api.heartbeat(c["id"], wrong)
    assert api.verify(c["id"], wrong)["valid"] is False
    with pytest.raises(LeaseLost):
        api.checkpoint(c["id"], wrong, 1)
    with pytest.raises(LeaseLost):
        api.release_task(c["id"], wrong, "succeeded")
    assert len(compared) == 4 and all(a != b for a, b in compared)
    api.heartbeat(c["id"], c["token"])
    assert api.verify(c["id"], c["token"])["valid"]
    api.release_task(c["id"], c["token"], "succeeded")
    assert len(compared) == 7 and all(a == b for a, b in compared[4:])
