"""Every method of the daemon's JSON-RPC protocol, spoken raw over its Unix socket: one
call that succeeds and its documented errors (LEASE_LOST, NOT_FOUND, CONFLICT,
LIMIT_EXCEEDED, invalid params), the agent methods included."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import db_rows
from helpers.daemon_wire import (
    CONFLICT,
    INVALID_PARAMS,
    LEASE_LOST,
    LIMIT,
    NOT_FOUND,
    Raw,
    assert_error,
    claimed,
    wait_until,
)

from orchestrator import protocol
from orchestrator.clock import now_ms

MIB = 1 << 20


DOCUMENTED_METHODS = ["submitTask", "claimTask", "heartbeat", "releaseTask", "staleRecovery",
                      "cancelTask", "checkpoint", "resolveTask", "getTask", "listTasks",
                      "listEvents", "status", "startSession", "resumeSession", "createGoal",
                      "executeToolIdempotent", "verify", "ping"]


def test_every_documented_method_is_served(raw):
    assert set(DOCUMENTED_METHODS) <= set(protocol.METHODS)
    for method in DOCUMENTED_METHODS:
        r = raw.call(method, {"no_such_param": 1})
        assert r["error"]["code"] == INVALID_PARAMS, (method, r)  # known, params checked
        assert r["error"]["data"]["field"] == "no_such_param"


def test_ping(raw, daemon):
    r = raw.result("ping")
    assert r["pong"] is True and r["mode"] == "daemon"
    assert Path(r["db"]) == daemon.db.resolve()
    assert r["pid"] == daemon.proc.pid
    assert abs(r["now"] - time.time() * 1000) < 5000
    assert_error(raw.error("ping", {"verbose": True}), INVALID_PARAMS, "invalid")


def test_submit_task(raw):
    a = raw.result("submitTask", {"payload": {"url": "x"}, "queue": "sub", "key": "k1",
                                  "priority": 5})
    assert a["created"] is True and a["status"] == "pending" and a["queue"] == "sub"
    assert a["payload"] == {"url": "x"} and a["priority"] == 5 and a["kind"] == "task"
    assert a["effect"] == "idempotent" and a["max_attempts"] == 3
    again = raw.result("submitTask", {"payload": {"other": 1}, "queue": "sub", "key": "k1"})
    assert again["created"] is False and again["id"] == a["id"]
    assert again["payload"] == {"url": "x"}
    assert raw.result("submitTask", {"queue": "sub", "effect": "unsafe"})["effect"] == "unsafe"
    # bad input: wrong type, bad name, over a limit
    e = raw.error("submitTask", {"priority": "high"})
    assert_error(e, INVALID_PARAMS, "invalid")
    assert e["data"]["field"] == "priority"
    e = raw.error("submitTask", {"queue": "no spaces"})
    assert_error(e, INVALID_PARAMS)
    assert e["data"]["field"] == "queue"
    e = raw.error("submitTask", {"key": "k" * 513})
    assert_error(e, LIMIT, "limit")
    assert e["data"]["field"] == "key" and e["data"]["limit"] == 512
    e = raw.error("submitTask", {"kind": "process"})
    assert_error(e, INVALID_PARAMS)
    assert len(raw.result("listTasks", {"queue": "sub"})) == 2


def test_payload_limit_is_one_mib_of_json_text(raw):
    # a JSON string's text is its characters plus two quotes
    at_limit = "x" * (MIB - 2)
    ok = raw.result("submitTask", {"queue": "big", "payload": at_limit}, timeout=30)
    assert ok["created"] is True
    e = raw.error("submitTask", {"queue": "big", "payload": at_limit + "x"}, timeout=30)
    assert_error(e, LIMIT, "limit")
    assert e["data"]["field"] == "payload" and e["data"]["limit"] == MIB
    assert len(raw.result("listTasks", {"queue": "big"})) == 1


def test_submit_many(raw):
    items = raw.result("submitMany", {"items": [{"queue": "m", "key": f"m{i}"}
                                                for i in range(3)]})
    assert [i["created"] for i in items] == [True] * 3
    assert_error(raw.error("submitMany", {"items": {"queue": "m"}}), INVALID_PARAMS)
    # one bad item fails the whole call: nothing of it is written
    e = raw.error("submitMany", {"items": [{"queue": "m", "key": "m9"},
                                           {"queue": "m", "parent_id": 999_999}]})
    assert_error(e, NOT_FOUND, "not_found")
    assert sorted(i["key"] for i in raw.result("listTasks", {"queue": "m"})) == \
        ["m0", "m1", "m2"]


def test_claim_task(raw):
    assert raw.result("claimTask", {"worker_id": "w", "queues": ["empty"]}) is None
    low = raw.result("submitTask", {"queue": "cq", "priority": 1})
    high = raw.result("submitTask", {"queue": "cq", "priority": 9, "payload": [1]})
    c = raw.result("claimTask", {"worker_id": "w1", "queues": ["cq"], "ttl": 10})
    assert c["id"] == high["id"] and c["status"] == "running" and c["worker_id"] == "w1"
    assert c["attempt"] == 1 and isinstance(c["token"], str) and c["token"]
    assert isinstance(c["fence"], int) and c["payload"] == [1]
    assert 9_000 <= c["lease_expires_at"] - time.time() * 1000 <= 11_000
    # item_id on a live lease: CONFLICT naming the holder and its expiry
    e = raw.error("claimTask", {"worker_id": "w2", "item_id": high["id"]})
    assert_error(e, CONFLICT, "conflict")
    assert e["data"]["worker_id"] == "w1"
    assert e["data"]["lease_expires_at"] == c["lease_expires_at"]
    assert_error(raw.error("claimTask", {"worker_id": "w2", "item_id": 987_654}),
                 NOT_FOUND, "not_found")
    assert_error(raw.error("claimTask", {"queues": ["cq"]}), INVALID_PARAMS)  # no worker_id
    assert_error(raw.error("claimTask", {"worker_id": "w2", "ttl": 0}), LIMIT, "limit")
    assert_error(raw.error("claimTask", {"worker_id": "w2", "ttl": "10"}), INVALID_PARAMS)
    c2 = raw.result("claimTask", {"worker_id": "w2", "item_id": low["id"]})
    assert c2["id"] == low["id"] and c2["fence"] > c["fence"]


def test_heartbeat(raw):
    c = claimed(raw, "hb", ttl=5)
    hb = raw.result("heartbeat", {"item_id": c["id"], "token": c["token"], "ttl": 60})
    assert hb["id"] == c["id"] and hb["fence"] == c["fence"]
    assert hb["cancel_requested"] is False
    assert hb["lease_expires_at"] > c["lease_expires_at"] + 50_000
    e = raw.error("heartbeat", {"item_id": c["id"], "token": "not-the-token"})
    assert_error(e, LEASE_LOST, "lease_lost")
    assert e["data"]["item_id"] == c["id"]
    assert_error(raw.error("heartbeat", {}), INVALID_PARAMS)
    assert_error(raw.error("heartbeat", {"item_id": c["id"]}), INVALID_PARAMS)


def test_heartbeat_of_several_leases(raw, daemon):
    a = claimed(raw, "hb-a", ttl=5)
    b = claimed(raw, "hb-b", ttl=5)
    stale = claimed(raw, "hb-s", ttl=0.2)
    row_of = "SELECT * FROM items WHERE id = ?"
    # stale's lease ends and the daemon's recovery fences it out: its row stays as is
    assert wait_until(lambda: db_rows(daemon.db, "SELECT status FROM items WHERE id = ?",
                                      (stale["id"],)) == [("pending",)], 10)
    stale_row = db_rows(daemon.db, row_of, (stale["id"],))
    r = raw.result("heartbeat", {"leases": [
        {"item_id": a["id"], "token": a["token"]},
        {"item_id": stale["id"], "token": stale["token"]},
        {"item_id": b["id"], "token": b["token"]}], "ttl": 60})
    assert [x["id"] for x in r["leases"]] == [a["id"], stale["id"], b["id"]]
    for got, c in ((r["leases"][0], a), (r["leases"][2], b)):
        assert got["fence"] == c["fence"] and got["cancel_requested"] is False
        assert got["lease_expires_at"] > c["lease_expires_at"] + 50_000
    err = r["leases"][1]["error"]
    assert err["code"] == LEASE_LOST and err["reason"] == "lease_lost" and err["message"]
    assert db_rows(daemon.db, row_of, (stale["id"],)) == stale_row
    # the same pair twice, a worker name: invalid, and nothing changes
    items_before = db_rows(daemon.db, "SELECT * FROM items ORDER BY id")
    pair = {"item_id": a["id"], "token": a["token"]}
    e = raw.error("heartbeat", {"leases": [pair, pair]})
    assert_error(e, INVALID_PARAMS, "invalid")
    assert e["data"]["field"] == "leases[1].item_id"
    assert_error(raw.error("heartbeat", {"leases": []}), LIMIT, "limit")
    e = raw.error("heartbeat", {"worker_id": "w-hb-a"})
    assert_error(e, INVALID_PARAMS, "invalid")
    assert "no longer accepted" in e["message"] and "reusing its name" in e["message"]
    assert db_rows(daemon.db, "SELECT * FROM items ORDER BY id") == items_before


def test_release_task(raw):
    c = claimed(raw, "rel")
    done = raw.result("releaseTask", {"item_id": c["id"], "token": c["token"],
                                      "outcome": "succeeded", "result": {"pages": 3}})
    assert done["status"] == "succeeded" and done["result"] == {"pages": 3}
    # the same (now stale) token again
    e = raw.error("releaseTask", {"item_id": c["id"], "token": c["token"],
                                  "outcome": "failed"})
    assert_error(e, LEASE_LOST, "lease_lost")
    assert e["data"]["item_id"] == c["id"] and e["data"]["status"] == "succeeded"
    assert raw.result("getTask", {"item_id": c["id"]})["status"] == "succeeded"
    c2 = claimed(raw, "rel2")
    assert_error(raw.error("releaseTask", {"item_id": c2["id"], "token": c2["token"],
                                           "outcome": "done"}), INVALID_PARAMS)
    assert_error(raw.error("releaseTask", {"item_id": c2["id"], "token": c2["token"]}),
                 INVALID_PARAMS)
    back = raw.result("releaseTask", {"item_id": c2["id"], "token": c2["token"],
                                      "outcome": "failed", "error": "boom", "retry_in": 0})
    assert back["status"] == "pending" and back["error"] == "boom"


def test_release_and_claim(raw):
    c = claimed(raw, "rac")
    nxt = raw.result("submitTask", {"queue": "rac", "payload": 2})
    out = raw.result("releaseAndClaim", {"item_id": c["id"], "token": c["token"],
                                         "outcome": "succeeded", "result": 1})
    assert out["released"]["status"] == "succeeded" and out["released"]["result"] == 1
    assert out["next"]["id"] == nxt["id"] and out["next"]["worker_id"] == "w-rac"
    # the released token is stale now: nothing is released, nothing claimed
    raw.result("submitTask", {"queue": "rac"})
    e = raw.error("releaseAndClaim", {"item_id": c["id"], "token": c["token"],
                                      "outcome": "succeeded"})
    assert_error(e, LEASE_LOST, "lease_lost")
    assert raw.result("listTasks", {"queue": "rac", "status": "pending"})[0]["attempts"] == 0
    # waiting: released at once, the claim parks until an item comes (none does here)
    t = time.monotonic()
    out = raw.result("releaseAndClaim", {"item_id": nxt["id"], "token": out["next"]["token"],
                                         "outcome": "succeeded", "queues": ["none"],
                                         "wait": 0.5})
    assert out["next"] is None and out["released"]["status"] == "succeeded"
    assert 0.4 <= time.monotonic() - t < 5


def test_stale_recovery(start_daemon):
    d = start_daemon("--recover-every", "600")  # the test runs recovery itself
    with Raw(d.sock) as raw:
        c = claimed(raw, "rec", ttl=0.05)
        assert wait_until(lambda: raw.result("status")["expired_leases"], 5)
        dry = raw.result("staleRecovery", {"dry_run": True})
        assert dry["dry_run"] is True and dry["count"] == 1
        assert dry["recovered"][0]["id"] == c["id"]
        assert dry["recovered"][0]["status"] == "pending"
        assert raw.result("getTask", {"item_id": c["id"]})["status"] == "running"
        real = raw.result("staleRecovery", {})
        assert real["count"] == 1 and real["recovered"][0]["id"] == c["id"]
        assert real["recovered"][0]["fence"] == c["fence"]
        assert raw.result("getTask", {"item_id": c["id"]})["status"] == "pending"
        assert raw.result("staleRecovery")["count"] == 0  # twice does nothing
        assert_error(raw.error("staleRecovery", {"dry_run": "yes"}), INVALID_PARAMS)


def test_daemon_recovers_by_itself(raw):
    c = claimed(raw, "selfrec", ttl=0.05)
    assert wait_until(lambda: raw.result("getTask", {"item_id": c["id"]})["status"]
                      == "pending", 5)
    types = [e["type"] for e in raw.result("listEvents", {"item_id": c["id"]})]
    assert types[-1] == "expired"


def test_cancel_task(raw):
    p = raw.result("submitTask", {"queue": "can"})
    assert raw.result("cancelTask", {"item_id": p["id"]})["status"] == "cancelled"
    c = claimed(raw, "can2")
    r = raw.result("cancelTask", {"item_id": c["id"]})
    assert r["status"] == "running" and r["cancel_requested"] is True
    hb = raw.result("heartbeat", {"item_id": c["id"], "token": c["token"]})
    assert hb["cancel_requested"] is True
    raw.result("releaseTask", {"item_id": c["id"], "token": c["token"],
                               "outcome": "succeeded"})
    e = raw.error("cancelTask", {"item_id": c["id"]})
    assert_error(e, CONFLICT, "conflict")
    assert e["data"]["status"] == "succeeded"
    assert_error(raw.error("cancelTask", {"item_id": 424_242}), NOT_FOUND, "not_found")
    assert_error(raw.error("cancelTask", {"item_id": 0}), LIMIT)


def test_checkpoint(raw):
    c = claimed(raw, "ck")
    r = raw.result("checkpoint", {"item_id": c["id"], "token": c["token"],
                                  "data": {"page": 7}})
    assert r == {"id": c["id"], "fence": c["fence"], "checkpoint": {"page": 7}}
    raw.result("releaseTask", {"item_id": c["id"], "token": c["token"], "outcome": "requeue"})
    again = raw.result("claimTask", {"worker_id": "next", "queues": ["ck"]})
    assert again["id"] == c["id"] and again["checkpoint"] == {"page": 7}
    e = raw.error("checkpoint", {"item_id": c["id"], "token": c["token"], "data": 1})
    assert_error(e, LEASE_LOST, "lease_lost")
    e = raw.error("checkpoint", {"item_id": c["id"], "token": again["token"],
                                 "data": "y" * MIB})
    assert_error(e, LIMIT, "limit")
    assert e["data"]["field"] == "data"
    assert_error(raw.error("checkpoint", {"item_id": c["id"], "token": again["token"]}),
                 INVALID_PARAMS)
    assert raw.result("getTask", {"item_id": c["id"]})["checkpoint"] == {"page": 7}


def test_resolve_task(start_daemon):
    d = start_daemon("--recover-every", "600")
    with Raw(d.sock) as raw:
        c = claimed(raw, "res", ttl=0.05, effect="unsafe")
        assert wait_until(lambda: raw.result("status")["expired_leases"], 5)
        rec = raw.result("staleRecovery")
        assert rec["recovered"][0]["status"] == "unknown"
        e = raw.error("resolveTask", {"item_id": c["id"], "outcome": "maybe"})
        assert_error(e, INVALID_PARAMS)
        r = raw.result("resolveTask", {"item_id": c["id"], "outcome": "retry"})
        assert r["status"] == "pending"
        e = raw.error("resolveTask", {"item_id": c["id"], "outcome": "succeeded"})
        assert_error(e, CONFLICT, "conflict")
        assert_error(raw.error("resolveTask", {"item_id": 55_555, "outcome": "failed"}),
                     NOT_FOUND)


def test_get_task(raw):
    c = claimed(raw, "get")
    item = raw.result("getTask", {"item_id": c["id"]})
    assert item["id"] == c["id"] and item["status"] == "running"
    assert item["fence"] == c["fence"] and item["worker_id"] == "w-get"
    assert "token" not in item and "token_hash" not in item
    assert c["token"] not in json.dumps(item)
    e = raw.error("getTask", {"item_id": 31_337})
    assert_error(e, NOT_FOUND, "not_found")
    assert e["data"]["item_id"] == 31_337
    assert_error(raw.error("getTask", {"item_id": "1"}), INVALID_PARAMS)
    assert_error(raw.error("getTask", {}), INVALID_PARAMS)


def test_list_tasks(raw):
    ids = [raw.result("submitTask", {"queue": "ls"})["id"] for _ in range(3)]
    listed = raw.result("listTasks", {"queue": "ls"})
    assert [i["id"] for i in listed] == ids[::-1]  # newest first
    assert [i["id"] for i in raw.result("listTasks", {"queue": "ls", "limit": 2})] == \
        ids[:0:-1]
    assert raw.result("listTasks", {"queue": "ls", "status": "running"}) == []
    assert_error(raw.error("listTasks", {"status": "busy"}), INVALID_PARAMS)
    assert_error(raw.error("listTasks", {"limit": -1}), LIMIT, "limit")


def test_list_events(raw):
    c = claimed(raw, "ev")
    raw.result("releaseTask", {"item_id": c["id"], "token": c["token"], "outcome": "succeeded"})
    evs = raw.result("listEvents", {"item_id": c["id"]})
    assert [e["type"] for e in evs] == ["submitted", "claimed", "released"]
    assert evs[-1]["detail"]["outcome"] == "succeeded"
    assert evs[-1]["detail"]["status"] == "succeeded"
    assert all(c["token"] not in json.dumps(e) for e in evs)
    later = raw.result("listEvents", {"since": evs[0]["seq"]})
    assert [e["seq"] for e in later] == [e["seq"] for e in evs[1:]]
    assert_error(raw.error("listEvents", {"since": "x"}), INVALID_PARAMS)
    assert_error(raw.error("listEvents", {"item_id": 0}), LIMIT)
    # an unknown item is not found, as for every other method; a known one with nothing
    # newer than since is an empty list
    assert_error(raw.error("listEvents", {"item_id": 999}), NOT_FOUND, "not_found")
    assert raw.result("listEvents", {"item_id": c["id"], "since": evs[-1]["seq"]}) == []


def test_status(raw):
    claimed(raw, "st")
    raw.result("submitTask", {"queue": "st"})
    st = raw.result("status")
    assert st["counts"]["running"] == 1 and st["counts"]["pending"] == 1
    assert [w["worker_id"] for w in st["workers"]] == ["w-st"]
    assert st["fence"] >= 1 and st["expired_leases"] == []
    assert_error(raw.error("status", {"verbose": 1}), INVALID_PARAMS)


def test_verify(raw):
    c = claimed(raw, "ver")
    assert raw.result("verify", {"item_id": c["id"], "token": c["token"]}) == \
        {"valid": True, "fence": c["fence"], "status": "running"}
    assert raw.result("verify", {"item_id": c["id"], "token": "guess"})["valid"] is False
    assert_error(raw.error("verify", {"item_id": 8_888, "token": "t"}), NOT_FOUND)
    assert_error(raw.error("verify", {"item_id": c["id"]}), INVALID_PARAMS)


def test_start_and_resume_session(start_daemon):
    d = start_daemon("--recover-every", "600")  # the session's lease is taken over, not recovered
    with Raw(d.sock) as raw:
        s = raw.result("startSession", {"worker_id": "agent", "key": "run-1", "ttl": 0.3,
                                        "payload": {"goal": "x"}})
        assert s["created"] is True and s["kind"] == "session" and s["status"] == "running"
        assert s["token"] and s["attempt"] == 1 and s["payload"] == {"goal": "x"}
        assert s["max_attempts"] == 0 and s["effect"] == "idempotent"
        # the same key while the lease is live: a resume, refused as a conflict
        e = raw.error("startSession", {"worker_id": "agent2", "key": "run-1"})
        assert_error(e, CONFLICT, "conflict")
        assert_error(raw.error("startSession", {"key": "run-2"}), INVALID_PARAMS)
        raw.result("checkpoint", {"item_id": s["id"], "token": s["token"],
                                  "data": {"step": 4}})
        assert_error(raw.error("resumeSession", {"session_id": s["id"], "worker_id": "b"}),
                     CONFLICT)
        assert wait_until(lambda: raw.result("status")["expired_leases"], 5)
        r = raw.result("resumeSession", {"session_id": s["id"], "worker_id": "agent2",
                                         "ttl": 30})
        assert r["id"] == s["id"] and r["checkpoint"] == {"step": 4}
        assert r["fence"] > s["fence"] and r["worker_id"] == "agent2" and r["attempt"] == 2
        assert_error(raw.error("heartbeat", {"item_id": s["id"], "token": s["token"]}),
                     LEASE_LOST)
        # once agent2 gives it back, the same key resumes it for agent3
        raw.result("releaseTask", {"item_id": s["id"], "token": r["token"],
                                   "outcome": "requeue"})
        again = raw.result("startSession", {"worker_id": "agent3", "key": "run-1"})
        assert again["id"] == s["id"] and again["created"] is False
        assert again["worker_id"] == "agent3" and again["checkpoint"] == {"step": 4}


def test_start_session_key_on_live_lease_is_a_conflict(raw):
    s = raw.result("startSession", {"worker_id": "agent", "key": "k", "ttl": 30})
    e = raw.error("startSession", {"worker_id": "other", "key": "k"})
    assert_error(e, CONFLICT, "conflict")
    assert raw.result("getTask", {"item_id": s["id"]})["worker_id"] == "agent"
    assert_error(raw.error("resumeSession", {"session_id": 4_040, "worker_id": "w"}),
                 NOT_FOUND)
    t = raw.result("submitTask", {"queue": "notasession"})
    assert_error(raw.error("resumeSession", {"session_id": t["id"], "worker_id": "w"}),
                 INVALID_PARAMS)


def test_create_goal_and_execute_tool(raw):
    s = raw.result("startSession", {"worker_id": "agent", "ttl": 30})
    g = raw.result("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g1",
                                  "payload": {"do": "fetch"}})
    assert g["created"] is True and g["claimed"] is True and g["kind"] == "goal"
    assert g["parent_id"] == s["id"] and g["worker_id"] == "agent" and g["token"]
    assert g["queue"] == f"session:{s['id']}"
    same = raw.result("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g1"})
    assert same["id"] == g["id"] and same["created"] is False and "token" not in same
    e = raw.error("createGoal", {"session_id": s["id"], "token": "stale", "key": "g2"})
    assert_error(e, LEASE_LOST, "lease_lost")
    assert_error(raw.error("createGoal", {"session_id": s["id"]}), INVALID_PARAMS)

    x = raw.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                             "tool": "fetch", "input": {"url": "u", "n": 1}})
    assert x["created"] is True and x["claimed"] is True and x["kind"] == "tool_execution"
    assert x["effect"] == "unsafe" and x["parent_id"] == g["id"] and x["token"]
    # the same input (keys in another order) is the same execution
    y = raw.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                             "tool": "fetch", "input": {"n": 1, "url": "u"}})
    assert y["id"] == x["id"] and y["created"] is False and y["claimed"] is False
    raw.result("releaseTask", {"item_id": x["id"], "token": x["token"],
                               "outcome": "succeeded", "result": {"bytes": 10}})
    z = raw.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                             "tool": "fetch", "input": {"url": "u", "n": 1}})
    assert z["id"] == x["id"] and z["status"] == "succeeded" and z["result"] == {"bytes": 10}
    k = raw.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                             "tool": "mail", "key": "send-1", "input": 1})
    e = raw.error("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                            "tool": "other", "key": "send-1"})
    assert_error(e, CONFLICT, "conflict")
    e = raw.error("executeToolIdempotent", {"goal_id": g["id"], "token": s["token"],
                                            "tool": "fetch", "input": 2})
    assert_error(e, LEASE_LOST, "lease_lost")
    assert_error(raw.error("executeToolIdempotent", {"goal_id": g["id"],
                                                     "token": g["token"]}), INVALID_PARAMS)
    assert_error(raw.error("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                                     "tool": "t" * 129}), LIMIT)

    tree = raw.result("replaySession", {"session_id": s["id"]})
    assert tree["id"] == s["id"] and [x["id"] for x in tree["goals"]] == [g["id"]]
    assert sorted(t["id"] for t in tree["goals"][0]["tool_executions"]) == \
        sorted([x["id"], k["id"]])
    assert [e["type"] for e in tree["events"]][:2] == ["submitted", "claimed"]
    assert s["token"] not in json.dumps(tree)
    assert_error(raw.error("replaySession", {"session_id": 9_191}), NOT_FOUND)
    assert_error(raw.error("replaySession", {"session_id": g["id"]}), INVALID_PARAMS)


def test_explain_task(raw):
    t = raw.result("submitTask", {"queue": "why"})
    r = raw.result("explainTask", {"item_id": t["id"]})
    assert r["id"] == t["id"] and r["status"] == "pending" and r["text"].startswith("pending:")
    c = raw.result("claimTask", {"worker_id": "w-why", "queues": ["why"]})
    assert raw.result("explainTask", {"item_id": c["id"]})["text"].startswith(
        "running: held by w-why")
    assert_error(raw.error("explainTask", {"item_id": 6_060}), NOT_FOUND)


def test_agent_methods_over_the_raw_protocol(start_daemon):
    d = start_daemon()
    w = Raw(d.sock)
    try:
        # startSession: created and claimed; the same key while it is held: CONFLICT.
        s = w.result("startSession", {"worker_id": "a1", "key": "wire", "payload": {"p": 1},
                                  "ttl": 30})
        assert (s["kind"], s["status"], s["created"], s["claimed"], s["worker_id"]) == \
            ("session", "running", True, True, "a1")
        assert s["token"] and s["lease_expires_at"] > now_ms() + 20_000
        e = w.error("startSession", {"worker_id": "a2", "key": "wire"})
        assert e["code"] == CONFLICT and e["data"]["worker_id"] == "a1"
        assert "a1" in e["message"]
        e = w.error("startSession", {"worker_id": "a2", "ttl": 0})
        assert e["code"] in (INVALID_PARAMS, 1004) and e["data"]["field"] == "ttl"

        # createGoal: with the session's token; a wrong token is LEASE_LOST.
        g = w.result("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g"})
        assert (g["kind"], g["parent_id"], g["created"], g["claimed"], g["worker_id"]) == \
            ("goal", s["id"], True, True, "a1")
        again = w.result("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g"})
        assert (again["id"], again["created"], again["claimed"]) == (g["id"], False, False)
        e = w.error("createGoal", {"session_id": s["id"], "token": "not-the-token"})
        assert e["code"] == LEASE_LOST

        # executeToolIdempotent: one execution per key; a stale token is LEASE_LOST; a
        # session is not a goal.
        x = w.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                           "tool": "send", "input": {"to": "t"}, "key": "x"})
        assert (x["kind"], x["effect"], x["created"], x["claimed"]) == \
            ("tool_execution", "unsafe", True, True) and x["token"]
        same = w.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                              "tool": "send", "input": {"to": "t"},
                                              "key": "x"})
        assert (same["id"], same["created"], same["claimed"]) == (x["id"], False, False)
        assert "token" not in same
        e = w.error("executeToolIdempotent", {"goal_id": g["id"], "token": s["token"],
                                            "tool": "send", "input": {}, "key": "y"})
        assert e["code"] == LEASE_LOST
        e = w.error("executeToolIdempotent", {"goal_id": s["id"], "token": s["token"],
                                            "tool": "send", "input": {}})
        assert e["code"] == INVALID_PARAMS

        # resumeSession: refused while held (naming the holder); after a requeue it
        # is claimed again with its checkpoint.
        e = w.error("resumeSession", {"session_id": s["id"], "worker_id": "a2"})
        assert e["code"] == CONFLICT and e["data"]["worker_id"] == "a1"
        w.result("checkpoint", {"item_id": s["id"], "token": s["token"], "data": {"at": 7}})
        w.result("releaseTask", {"item_id": s["id"], "token": s["token"], "outcome": "requeue"})
        r = w.result("resumeSession", {"session_id": s["id"], "worker_id": "a2", "ttl": 30})
        assert (r["id"], r["worker_id"], r["attempt"], r["checkpoint"]) == \
            (s["id"], "a2", 2, {"at": 7})
        assert r["token"] != s["token"]
        e = w.error("resumeSession", {"session_id": g["id"], "worker_id": "a2"})
        assert e["code"] == INVALID_PARAMS
        e = w.error("createGoal", {"session_id": s["id"], "token": s["token"]})
        assert e["code"] == LEASE_LOST  # the requeue ended that claim
        valid = w.result("verify", {"item_id": s["id"], "token": s["token"]})
        assert valid["valid"] is False
    finally:
        w.close()
