"""Heartbeats: one lease, or many in one call, each extended or refused on its own;
for the ttl given or the claim's own; never by a worker's name."""

from __future__ import annotations

import pytest
from conftest import T0_MS, n_events, types_of

from orchestrator import LeaseLost
from orchestrator.clock import now_ms


def test_heartbeat_ttl_may_shorten_and_default_is_claim_ttl(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1", ttl=60)
    clock.tick(1)
    hb = api.heartbeat(iid, claim["token"], ttl=5)
    assert hb["lease_expires_at"] == T0_MS + 1000 + 5000
    assert api.get_task(iid)["lease_expires_at"] == T0_MS + 6000
    clock.tick(1)
    # without ttl: the claim's ttl, not the last heartbeat's
    hb = api.heartbeat(iid, claim["token"])
    assert hb["lease_expires_at"] == T0_MS + 2000 + 60_000
    api.heartbeat(iid, claim["token"], ttl=0.5)
    clock.tick(0.5)
    with pytest.raises(LeaseLost):
        api.heartbeat(iid, claim["token"])
    assert api.stale_recovery()["count"] == 1
    assert api.doctor()["ok"]


def test_heartbeat_of_several_leases_each_on_its_own(api, clock, store):
    ids = [api.submit_task(i)["id"] for i in range(4)]
    a = api.claim_task("w1", ttl=10)
    b = api.claim_task("w2", ttl=30)
    c = api.claim_task("w1", ttl=10)
    d = api.claim_task("w1", ttl=1)
    assert [a["id"], b["id"], c["id"], d["id"]] == ids
    api.release_task(c["id"], c["token"], "requeue")
    c2 = api.claim_task("w3", ttl=10, item_id=c["id"])  # c's token is superseded
    clock.tick(2)  # d has expired
    untouched = {i: store.snapshot()["items"][i - 1] for i in (c["id"], d["id"])}
    n = n_events(api)
    r = api.heartbeat(leases=[{"item_id": a["id"], "token": a["token"]},
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
    assert n_events(api) == n + 2
    items = store.snapshot()["items"]
    assert {i: items[i - 1] for i in (c["id"], d["id"])} == untouched
    assert api.verify(c["id"], c2["token"])["valid"]
    assert types_of(api, a["id"])[-1] == types_of(api, b["id"])[-1] == "heartbeat"

    clock.tick(1)
    r = api.heartbeat(leases=[{"item_id": a["id"], "token": a["token"]},
                              {"item_id": b["id"], "token": b["token"]}], ttl=5)
    now = now_ms()
    assert [x["lease_expires_at"] for x in r["leases"]] == [now + 5000, now + 5000]
    # each lease's worker stays registered as live
    assert {"w1", "w2"} <= {w["worker_id"] for w in api.status()["workers"]}
    assert api.doctor()["ok"]


def test_heartbeat_refuses_a_worker_name_and_bad_lease_lists(api, store):
    from orchestrator import InvalidInput, LimitExceeded

    api.submit_task(1)
    c = api.claim_task("w1", ttl=10)
    before = store.snapshot()
    with pytest.raises(InvalidInput, match=r"worker_id: no longer accepted: .*reusing its name"):
        api._call("heartbeat", {"worker_id": "w1"})
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
            api.heartbeat(leases=bad)
    with pytest.raises(LimitExceeded, match="leases: give 1 to 1000"):
        api.heartbeat(leases=[{"item_id": i, "token": "t"} for i in range(1, 1002)])
    with pytest.raises(InvalidInput, match="give item_id with token, or leases"):
        api.heartbeat(c["id"], c["token"], leases=[lease])
    with pytest.raises(InvalidInput):
        api.heartbeat(c["id"])
    assert store.snapshot() == before
