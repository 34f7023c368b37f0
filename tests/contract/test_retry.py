"""Retrying: a dead, failed or cancelled task (or session) goes back to pending at once,
with as many more attempts as it was submitted with, in one ``requeued`` event; nothing
else can be retried, and a refused retry changes nothing."""

from __future__ import annotations

import pytest
from conftest import events_of, n_events, types_of

from orchestrator import Conflict, InvalidInput
from orchestrator.clock import now_ms


def exhaust(api, iid: int, times: int) -> None:
    for _ in range(times):
        c = api.claim_task("w1", item_id=iid)
        api.release_task(iid, c["token"], "failed", error="boom", retry_in=0)


def test_a_dead_item_gets_a_fresh_budget_and_runs_again(api, clock):
    iid = api.submit_task("x", max_attempts=2)["id"]
    exhaust(api, iid, 2)
    assert api.get_task(iid)["status"] == "dead"
    clock.tick(5)
    item = api.retry_task(iid, by="web:alice")
    assert (item["status"], item["attempts"], item["max_attempts"]) == ("pending", 2, 4)
    assert item["run_after"] == now_ms() and item["error"] == "boom"
    last = events_of(api, iid)[-1]
    assert last["type"] == "requeued"
    assert last["detail"] == {"status": "pending", "run_after": now_ms(), "max_attempts": 4,
                              "cancel_requested": 0, "previous_status": "dead",
                              "by": "web:alice"}
    exhaust(api, iid, 2)  # two more claims, then dead again
    assert api.get_task(iid)["status"] == "dead"
    # the budget is the submitted one, not the one the first retry set
    assert api.retry_task(iid)["max_attempts"] == 6
    assert "by" not in events_of(api, iid)[-1]["detail"]
    assert api.doctor()["ok"]


def test_failed_and_cancelled_items_are_retried(api, clock):
    failed = api.submit_task("f")["id"]
    c = api.claim_task("w1", item_id=failed)
    api.release_task(failed, c["token"], "failed", no_retry=True)
    cancelled = api.submit_task("c", max_attempts=5)["id"]
    c = api.claim_task("w1", item_id=cancelled)
    api.cancel_task(cancelled)
    api.release_task(cancelled, c["token"], "failed")  # a cancel request makes it cancelled
    assert api.get_task(cancelled)["cancel_requested"] is True
    assert api.retry_task(failed)["max_attempts"] == 4
    again = api.retry_task(cancelled)
    assert (again["status"], again["cancel_requested"], again["max_attempts"]) == \
        ("pending", False, 6)
    assert {api.claim_task("w2")["id"], api.claim_task("w2")["id"]} == {failed, cancelled}
    assert api.doctor()["ok"]


def test_unlimited_stays_unlimited(api, clock):
    s = api.start_session("agent")
    api.release_task(s["id"], s["token"], "cancelled")
    assert api.retry_task(s["id"])["max_attempts"] == 0
    assert api.claim_task("w1", kinds="session")["id"] == s["id"]


@pytest.mark.parametrize("status", ["pending", "running", "succeeded", "unknown"])
def test_other_statuses_are_refused_and_nothing_changes(api, clock, status):
    iid = api.submit_task("x", effect="unsafe" if status == "unknown" else None)["id"]
    if status != "pending":
        c = api.claim_task("w1", item_id=iid, ttl=5)
        if status == "succeeded":
            api.release_task(iid, c["token"], "succeeded")
        elif status == "unknown":
            clock.tick(6)
            api.stale_recovery()
    before, item = n_events(api), api.get_task(iid)
    assert item["status"] == status
    with pytest.raises(Conflict) as err:
        api.retry_task(iid)
    assert f"item {iid} is {status}" in str(err.value)
    if status == "unknown":
        assert f"orch resolve {iid} --outcome retry" in str(err.value)
    assert api.get_task(iid) == item and n_events(api) == before


def test_goals_and_tool_executions_run_again_only_under_their_parent(api, clock):
    s = api.start_session("agent")
    g = api.create_goal(s["id"], s["token"])
    api.release_task(g["id"], g["token"], "failed", no_retry=True)
    with pytest.raises(Conflict, match="through its session's holder"):
        api.retry_task(g["id"])
    assert types_of(api, g["id"])[-1] == "released"


def test_by_is_checked_like_a_worker_id_and_recorded_by_cancel_and_resolve(api, clock):
    iid = api.submit_task("x", effect="unsafe")["id"]
    with pytest.raises(InvalidInput, match="by"):
        api.cancel_task(iid, by="bad\nname")
    with pytest.raises(InvalidInput, match="by"):
        api.retry_task(iid, by="")
    c = api.claim_task("w1", ttl=5)
    api.cancel_task(iid, by="web:bob")
    assert events_of(api, iid)[-1]["detail"]["by"] == "web:bob"
    clock.tick(6)
    api.stale_recovery()
    api.resolve_task(iid, "retry", by="web:carol")
    last = events_of(api, iid)[-1]
    assert (last["type"], last["detail"]["by"], last["fence"]) == \
        ("resolved", "web:carol", c["fence"])
    other = api.submit_task("y")["id"]
    api.cancel_task(other, by="ops")
    assert events_of(api, other)[-1]["detail"]["by"] == "ops"
