"""Sessions, goals and tool executions through the API: one execution per key (derived
from the tool and its canonical input when none is given), and a parent's claim that
ends (released with any outcome, expired, taken over) fences out its running
descendants in the same transaction, at the very instant its lease ends."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import events_of, types_of

from orchestrator import Conflict, InvalidInput, LeaseLost


def test_key_defaults_to_tool_and_canonical_input_hash_scoped_to_goal(api):
    s = api.start_session("a1", ttl=60)
    g1 = api.create_goal(s["id"], s["token"], key="g1")
    g2 = api.create_goal(s["id"], s["token"], key="g2")
    first = api.execute_tool_idempotent(g1["id"], g1["token"], "write",
                                        {"b": [1, 2], "a": "é"})
    canonical = json.dumps({"a": "é", "b": [1, 2]}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    assert first["key"] == f"auto:write:{hashlib.sha256(canonical.encode()).hexdigest()}"
    assert first["created"] and first["claimed"] and first["payload"] == {
        "tool": "write", "input": {"a": "é", "b": [1, 2]}}
    # The same input in another key order is the same call.
    same = api.execute_tool_idempotent(g1["id"], g1["token"], "write",
                                       {"a": "é", "b": [1, 2]})
    assert (same["id"], same["created"], same["claimed"]) == (first["id"], False, False)
    # Another tool, another input, or another goal: another execution.
    other_tool = api.execute_tool_idempotent(g1["id"], g1["token"], "read",
                                             {"a": "é", "b": [1, 2]})
    other_input = api.execute_tool_idempotent(g1["id"], g1["token"], "write", {"a": 1})
    other_goal = api.execute_tool_idempotent(g2["id"], g2["token"], "write",
                                             {"b": [1, 2], "a": "é"})
    assert len({first["id"], other_tool["id"], other_input["id"], other_goal["id"]}) == 4
    assert other_goal["key"] == first["key"] and other_goal["created"]
    # A succeeded execution is returned with its result and never run again.
    api.release_task(first["id"], first["token"], "succeeded", result={"bytes": 3})
    done = api.execute_tool_idempotent(g1["id"], g1["token"], "write", {"b": [1, 2], "a": "é"})
    assert (done["id"], done["status"], done["claimed"], done["result"]) == \
        (first["id"], "succeeded", False, {"bytes": 3})
    assert types_of(api, first["id"]).count("claimed") == 1
    # An explicit key naming another tool's execution is refused, and changes nothing.
    before = api.list_tasks(limit=0)
    with pytest.raises(Conflict):
        api.execute_tool_idempotent(g1["id"], g1["token"], "read", {}, key=first["key"])
    assert api.list_tasks(limit=0) == before
    # Goals and tool executions are made under a parent lease, never by submit.
    for kind in ("goal", "tool_execution"):
        with pytest.raises(InvalidInput, match="kind"):
            api.submit_task({"x": 1}, kind=kind, parent_id=s["id"])


def family(api) -> dict:
    """A session (ttl 10 s) with two goals and executions under leases of 300 s."""
    s = api.start_session("fam", ttl=10)
    g1 = api.create_goal(s["id"], s["token"], key="g1", ttl=300)
    g2 = api.create_goal(s["id"], s["token"], key="g2", ttl=300)
    e1 = api.execute_tool_idempotent(g1["id"], g1["token"], "send", {"n": 1}, key="e1")
    e2 = api.execute_tool_idempotent(g1["id"], g1["token"], "read", {"n": 2}, key="e2",
                                     effect="idempotent")
    e3 = api.execute_tool_idempotent(g2["id"], g2["token"], "send", {"n": 3}, key="e3")
    e4 = api.execute_tool_idempotent(g2["id"], g2["token"], "send", {"n": 4}, key="e4")
    api.release_task(e4["id"], e4["token"], "succeeded", result={"done": 4})
    return {"s": s, "g1": g1, "g2": g2, "e1": e1, "e2": e2, "e3": e3, "e4": e4}


def test_cascade_on_expiry_in_one_recovery_pass(api, clock):
    f = family(api)
    ids = {name: c["id"] for name, c in f.items()}
    clock.tick(11)  # only the session's lease is over
    assert [x["id"] for x in api.status()["expired_leases"]] == [ids["s"]]
    seq_before = api.list_events(limit=0)[-1]["seq"]

    rec = api.stale_recovery()
    got = {x["id"]: (x["status"], x["reason"]) for x in rec["recovered"]}
    assert got == {ids["s"]: ("pending", "lease_expired"),
                   ids["g1"]: ("pending", "parent_lease_lost"),
                   ids["g2"]: ("pending", "parent_lease_lost"),
                   ids["e1"]: ("unknown", "parent_lease_lost"),
                   ids["e2"]: ("pending", "parent_lease_lost"),
                   ids["e3"]: ("unknown", "parent_lease_lost")}
    assert rec["count"] == 6
    # One pass, one transaction: six consecutive events at one time.
    new = api.list_events(since=seq_before, limit=0)
    assert [e["type"] for e in new] == ["expired"] * 6
    assert [e["seq"] for e in new] == list(range(seq_before + 1, seq_before + 7))
    assert len({e["at"] for e in new}) == 1
    by_item = {e["item_id"]: e for e in new}
    assert by_item[ids["s"]]["detail"]["reason"] == "lease_expired"
    for name in ("g1", "g2", "e1", "e2", "e3"):
        e = by_item[ids[name]]
        assert e["detail"]["reason"] == "parent_lease_lost"
        assert e["detail"]["status"] == got[ids[name]][0]
        assert e["fence"] == f[name]["fence"] and e["worker_id"] == "fam"
        # Their own leases had 290 s left, yet their tokens are dead now.
        assert api.verify(ids[name], f[name]["token"])["valid"] is False
        with pytest.raises(LeaseLost):
            api.heartbeat(ids[name], f[name]["token"])
    e4 = api.get_task(ids["e4"])
    assert (e4["status"], e4["result"]) == ("succeeded", {"done": 4})
    assert "expired" not in types_of(api, ids["e4"])
    assert api.stale_recovery()["count"] == 0  # twice does nothing the second time


def test_cascade_on_takeover_via_resume(api, clock):
    f = family(api)
    ids = {name: c["id"] for name, c in f.items()}
    clock.tick(11)
    seq_before = api.list_events(limit=0)[-1]["seq"]
    new = api.resume_session(ids["s"], "fam-2", ttl=60)
    assert new["id"] == ids["s"] and new["worker_id"] == "fam-2"
    evs = api.list_events(since=seq_before, limit=0)
    assert evs[0]["type"] == "taken_over" and evs[0]["item_id"] == ids["s"]
    assert evs[0]["detail"]["by"] == "fam-2" and evs[0]["detail"]["previous_worker"] == "fam"
    assert evs[-1]["type"] == "claimed" and evs[-1]["item_id"] == ids["s"]
    expired = {e["item_id"]: e for e in evs if e["type"] == "expired"}
    want = {"g1": "pending", "g2": "pending", "e1": "unknown", "e2": "pending",
            "e3": "unknown"}
    assert set(expired) == {ids[n] for n in want}
    for name, status in want.items():
        assert expired[ids[name]]["detail"]["status"] == status
        assert expired[ids[name]]["fence"] == f[name]["fence"]
        assert api.get_task(ids[name])["status"] == status
        assert api.verify(ids[name], f[name]["token"])["valid"] is False
    assert api.get_task(ids["e4"])["status"] == "succeeded"
    assert api.stale_recovery()["count"] == 0
    # Goals and their executions alike were recovered because of the takeover.
    assert {n: expired[ids[n]]["detail"]["reason"] for n in want} == \
        dict.fromkeys(want, "parent_taken_over")


def test_cascade_from_a_goal_alone(api, clock):
    s = api.start_session("fam", ttl=300)
    g = api.create_goal(s["id"], s["token"], key="g", ttl=10)
    e1 = api.execute_tool_idempotent(g["id"], g["token"], "send", {}, key="e1", ttl=300)
    e2 = api.execute_tool_idempotent(g["id"], g["token"], "read", {}, key="e2", ttl=300,
                                     effect="idempotent")
    clock.tick(11)
    rec = api.stale_recovery()
    got = {x["id"]: (x["status"], x["reason"]) for x in rec["recovered"]}
    assert got == {g["id"]: ("pending", "lease_expired"),
                   e1["id"]: ("unknown", "parent_lease_lost"),
                   e2["id"]: ("pending", "parent_lease_lost")}
    assert api.verify(s["id"], s["token"])["valid"]  # the session goes on
    # A claim by id of the expired goal, before any recovery pass, recovers it (and so
    # cascades) but does not take it: a goal is claimed only for its session's holder.
    g2 = api.create_goal(s["id"], s["token"], key="g")
    assert g2["id"] == g["id"] and g2["claimed"]
    e3 = api.execute_tool_idempotent(g["id"], g2["token"], "send", {}, key="e3", ttl=300)
    api.heartbeat(g["id"], g2["token"], ttl=1)
    clock.tick(2)
    with pytest.raises(Conflict, match="now pending"):
        api.claim_task("other", ttl=30, item_id=g["id"])
    assert api.get_task(g["id"])["status"] == "pending"
    taken = api.create_goal(s["id"], s["token"], key="g")
    assert taken["id"] == g["id"] and taken["fence"] > g2["fence"]
    ev = [e for e in events_of(api, e3["id"]) if e["type"] == "expired"]
    assert len(ev) == 1
    assert ev[0]["detail"]["reason"] == "parent_lease_lost"
    assert ev[0]["detail"]["status"] == "unknown"
    assert api.get_task(e3["id"])["status"] == "unknown"


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled", "requeue"])
def test_every_release_of_a_session_or_goal_fences_out_its_running_descendants(
        api, outcome):
    s = api.start_session("w", ttl=60)
    g = api.create_goal(s["id"], s["token"], key="g")
    x = api.execute_tool_idempotent(g["id"], g["token"], "send", {}, key="x")
    done = api.execute_tool_idempotent(g["id"], g["token"], "read", {}, key="done")
    api.release_task(done["id"], done["token"], "succeeded", result=1)
    # A goal released alone takes its own executions with it; the session goes on.
    g_alone = api.create_goal(s["id"], s["token"], key="alone")
    x_alone = api.execute_tool_idempotent(g_alone["id"], g_alone["token"], "send", {})
    api.release_task(g_alone["id"], g_alone["token"], outcome)
    assert api.get_task(x_alone["id"])["status"] == "unknown"
    assert api.verify(s["id"], s["token"])["valid"] and api.verify(x["id"], x["token"])["valid"]

    api.release_task(s["id"], s["token"], outcome)
    for c, status in ((g, "pending"), (x, "unknown")):
        item = api.get_task(c["id"])
        assert item["status"] == status
        expired = api.list_events(item_id=c["id"])[-1]
        assert (expired["type"], expired["detail"]["reason"]) == ("expired", "parent_released")
        with pytest.raises(LeaseLost):
            api.heartbeat(c["id"], c["token"])
    assert api.get_task(done["id"])["status"] == "succeeded"
    # release_and_claim releases the same way.
    s3 = api.start_session("w", ttl=60)
    g3 = api.create_goal(s3["id"], s3["token"])
    api.release_and_claim(s3["id"], s3["token"], outcome, kinds=["task"])
    assert api.get_task(g3["id"])["status"] == "pending"
    assert api.doctor()["ok"]


def test_a_child_is_fenced_at_the_instant_its_ancestors_lease_ends(api, clock):
    s = api.start_session("w", ttl=10)
    g = api.create_goal(s["id"], s["token"], ttl=300)
    x = api.execute_tool_idempotent(g["id"], g["token"], "send", {}, ttl=300)
    clock.tick(9.999)
    api.heartbeat(x["id"], x["token"])
    api.checkpoint(g["id"], g["token"], {"ok": True})
    clock.tick(0.001)  # the session's lease ends at now + ttl: over at that instant
    with pytest.raises(LeaseLost, match=f"session {s['id']}"):
        api.heartbeat(x["id"], x["token"])
    with pytest.raises(LeaseLost, match=f"session {s['id']}"):
        api.checkpoint(g["id"], g["token"], {"ok": False})
    assert [e["id"] for e in api.status()["expired_leases"]] == [s["id"]]
