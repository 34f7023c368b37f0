"""Every method of the daemon's JSON-RPC protocol, spoken raw over its Unix socket: one
call that succeeds and its documented errors (LEASE_LOST, NOT_FOUND, CONFLICT,
LIMIT_EXCEEDED, invalid params), the agent methods included."""

from __future__ import annotations

from helpers.daemon_wire import CONFLICT, INVALID_PARAMS, LEASE_LOST, Raw

from orchestrator.clock import now_ms


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
