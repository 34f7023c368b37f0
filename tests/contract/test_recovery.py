"""Recovery of expired leases: in one pass each expired item is fenced out and moved on by
its effect and attempts left (pending after a backoff, dead, or unknown for an unsafe
one), and a second pass does nothing; an unknown item moves on only when resolved; a
claim by id of an expired lease applies the same rules first."""

from __future__ import annotations

import pytest
from conftest import assert_backoff, at_ms, events_of

from orchestrator import Conflict, LeaseLost, NotFound
from orchestrator.clock import now_ms


def test_stale_recovery_outcomes(api, clock, store):
    idem = api.submit_task("idem", max_attempts=3)["id"]
    last = api.submit_task("last", max_attempts=1)["id"]
    unsafe = api.submit_task("unsafe", effect="unsafe")["id"]
    unlimited = api.submit_task("unlimited", max_attempts=0)["id"]
    live = api.submit_task("live")["id"]
    claims = {c["id"]: c for c in (api.claim_task("w1", ttl=5) for _ in range(4))}
    api.claim_task("w2", ttl=600)
    assert set(claims) == {idem, last, unsafe, unlimited}
    clock.tick(5.5)
    now = now_ms()

    before = store.snapshot()
    dry = api.stale_recovery(dry_run=True)
    assert dry["dry_run"] is True and dry["count"] == 4
    assert store.snapshot() == before  # a dry run changes nothing

    rec = api.stale_recovery()
    assert rec["dry_run"] is False and rec["count"] == 4
    got = {r["id"]: r for r in rec["recovered"]}
    want = {idem: "pending", last: "dead", unsafe: "unknown", unlimited: "pending"}
    assert {i: r["status"] for i, r in got.items()} == want
    assert {i: r["status"] for i, r in
            ((r["id"], r) for r in dry["recovered"])} == want
    for i, r in got.items():
        assert r["worker_id"] == "w1" and r["fence"] == claims[i]["fence"]
        assert r["reason"] == "lease_expired"
        item = api.get_task(i)
        assert item["status"] == want[i]
        assert item["lease_expires_at"] is None
        assert item["attempts"] == 1
        ev = events_of(api, i)[-1]
        assert ev["type"] == "expired" and ev["detail"]["status"] == want[i]
        with pytest.raises(LeaseLost):
            api.heartbeat(i, claims[i]["token"])
    assert_backoff(api.get_task(idem), now, 1)
    assert_backoff(api.get_task(unlimited), now, 1)
    assert api.get_task(live)["status"] == "running"

    # twice: nothing the second time
    before = store.snapshot()
    again = api.stale_recovery()
    assert again["count"] == 0 and again["recovered"] == []
    assert store.snapshot() == before

    # the retried ones come back after their backoff; dead and unknown do not
    clock.tick(1)
    got_back = {api.claim_task("w3")["id"], api.claim_task("w3")["id"]}
    assert got_back == {idem, unlimited}
    assert api.claim_task("w3") is None
    assert api.doctor()["ok"]


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


def test_stale_recovery_exact_expiry_agrees_with_holder_check(api, clock):
    iid = api.submit_task("x")["id"]
    claim = api.claim_task("w1", ttl=10)
    clock.tick(9.999)
    assert api.stale_recovery()["count"] == 0
    assert api.verify(iid, claim["token"])["valid"] is True
    clock.tick(0.001)
    assert api.verify(iid, claim["token"])["valid"] is False
    assert api.stale_recovery()["count"] == 1


def test_checkpoint_handed_over_after_expiry_and_recovery(api, clock):
    iid = api.submit_task("x")["id"]
    c1 = api.claim_task("w1", ttl=5)
    api.checkpoint(iid, c1["token"], {"step": [1, 2]})
    clock.tick(6)
    rec = api.stale_recovery()
    assert rec["count"] == 1
    item = api.get_task(iid)
    assert item["status"] == "pending" and item["checkpoint"] == {"step": [1, 2]}
    at_ms(clock, item["run_after"])
    c2 = api.claim_task("w2")
    assert c2["id"] == iid and c2["checkpoint"] == {"step": [1, 2]}
    assert c2["fence"] > c1["fence"]


def _unknown_item(api, clock) -> int:
    iid = api.submit_task("side effect", effect="unsafe")["id"]
    api.claim_task("w1", ttl=1)
    clock.tick(2)
    assert api.stale_recovery()["recovered"][0]["status"] == "unknown"
    return iid


@pytest.mark.parametrize("outcome,status", [("succeeded", "succeeded"), ("failed", "failed"),
                                            ("retry", "pending"), ("cancelled", "cancelled")])
def test_resolve_unknown(api, clock, outcome, status):
    iid = _unknown_item(api, clock)
    assert api.claim_task("w2") is None  # unknown is never claimed blindly
    item = api.resolve_task(iid, outcome)
    assert item["status"] == status
    assert api.get_task(iid)["status"] == status
    ev = events_of(api, iid)[-1]
    assert ev["type"] == "resolved" and ev["detail"]["outcome"] == outcome
    assert ev["detail"]["status"] == status
    claim = api.claim_task("w2")
    if outcome == "retry":
        assert item["run_after"] == now_ms()
        assert claim is not None and claim["id"] == iid and claim["attempt"] == 2
    else:
        assert claim is None
    with pytest.raises(Conflict):
        api.resolve_task(iid, outcome)
    assert api.doctor()["ok"]


def test_resolve_conflict_on_non_unknown(api, clock, store):
    pending = api.submit_task("p")["id"]
    running = api.submit_task("r")["id"]
    done = api.submit_task("d")["id"]
    c = api.claim_task("w1", item_id=done)
    api.release_task(done, c["token"], "succeeded")
    api.claim_task("w1", item_id=running)
    before = store.snapshot()
    for iid, status in ((pending, "pending"), (running, "running"), (done, "succeeded")):
        with pytest.raises(Conflict) as exc:
            api.resolve_task(iid, "succeeded")
        assert status in str(exc.value)
    assert store.snapshot() == before
    with pytest.raises(NotFound):
        api.resolve_task(9999, "retry")


def test_claim_by_id_recovery_is_committed_though_the_claim_is_refused(api, clock):
    item = api.submit_task("x", effect="unsafe")
    api.claim_task("w1", ttl=5)
    clock.tick(5)
    with pytest.raises(Conflict, match="now unknown") as refused:
        api.claim_task("w2", item_id=item["id"])
    assert refused.value.data == {"item_id": item["id"], "status": "unknown"}
    assert api.get_task(item["id"])["status"] == "unknown"
    assert api.stale_recovery()["count"] == 0  # nothing left for recovery
    assert api.doctor()["ok"]
