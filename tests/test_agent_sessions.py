"""A session outlives its holder: while the dead holder's lease lives nobody may take it;
after it, recovery or a resume hands it (with its checkpoint) to the next holder, the
tree under it is recovered for the same cause (an unsafe tool call becomes unknown, never
run again), and the dead holder's tokens are refused everywhere: embedded, CLI, daemon.

The holder is a real process (tests/helpers/agent_holder.py) killed with SIGKILL."""

from __future__ import annotations

import json

import pytest
from conftest import events_of, kill9, sleep_past, spawn, types_of

from orchestrator import Conflict, LeaseLost
from orchestrator.clock import now_ms


@pytest.fixture
def killed_holder(db_path, tmp_path):
    """Start agent_holder.py (ttl 1 s), read its claims, SIGKILL it; return the claims."""
    def start(key: str) -> dict:
        p = spawn("agent_holder.py", str(db_path), "1", key, log=tmp_path / "holder.err")
        try:
            line = p.stdout.readline()
            assert line, (tmp_path / "holder.err").read_text()
            claims = json.loads(line)
        finally:
            kill9(p)
        return claims
    return start


def old_writes(api, old: dict) -> list:
    """Every holder write the dead agent could still try, as thunks."""
    s, g = old["session"], old["goal"]
    calls = []
    for c in old.values():
        calls += [lambda c=c: api.heartbeat(c["id"], c["token"]),
                  lambda c=c: api.heartbeat(c["id"], c["token"], ttl=60),
                  lambda c=c: api.checkpoint(c["id"], c["token"], {"stale": True}),
                  lambda c=c: api.release_task(c["id"], c["token"], "succeeded", result=1),
                  lambda c=c: api.release_task(c["id"], c["token"], "failed", error="x"),
                  lambda c=c: api.release_task(c["id"], c["token"], "requeue")]
    calls += [
        lambda: api.create_goal(s["id"], s["token"], key="g1"),
        lambda: api.create_goal(s["id"], s["token"], key="another-goal"),
        lambda: api.execute_tool_idempotent(g["id"], g["token"], "fetch",
                                            {"url": "https://example.org"}, key="fetch",
                                            effect="idempotent"),
        lambda: api.execute_tool_idempotent(g["id"], g["token"], "send_email",
                                            {"to": "team@example.org"}, key="send"),
        lambda: api.execute_tool_idempotent(g["id"], g["token"], "new_tool", {"n": 1}),
    ]
    return calls


def assert_fenced_out(api, old: dict) -> None:
    """Every write with an old token is LeaseLost and changes nothing; verify says no."""
    before_items = api.list_tasks(limit=0)
    before_events = len(api.list_events(limit=0))
    for i, call in enumerate(old_writes(api, old)):
        with pytest.raises(LeaseLost):
            call()
    for name, c in old.items():
        v = api.verify(c["id"], c["token"])
        assert v["valid"] is False, name
        assert v["fence"] > c["fence"] or v["status"] != "running", (name, v)
    assert api.list_tasks(limit=0) == before_items
    assert len(api.list_events(limit=0)) == before_events


def assert_cli_fenced_out(cli, old: dict) -> None:
    s, g = old["session"], old["goal"]
    for c in old.values():
        i, t = str(c["id"]), c["token"]
        for args in (["heartbeat", i, "--token", t],
                     ["checkpoint", i, "--token", t, "--data", "{}"],
                     ["release", i, "--token", t, "--outcome", "succeeded"],
                     ["verify", i, "--token", t]):
            r = cli(*args)
            assert r.code == 4, (args, r)
            if args[0] != "verify":
                assert r.err.startswith("orch: error: "), r
    r = cli("goal", "add", "--session", str(s["id"]), "--token", s["token"], "--key", "g1")
    assert r.code == 4, r
    r = cli("tool", "exec", "--goal", str(g["id"]), "--token", g["token"], "--tool", "fetch",
            "--input", '{"url": "https://example.org"}', "--key", "fetch")
    assert r.code == 4, r


@pytest.mark.slow
@pytest.mark.parametrize("way", ["recover_then_resume", "resume_takes_over",
                                 "start_with_key_takes_over"])
def test_killed_session_holder(way, killed_holder, orch, cli, orch_cli, db_path,
                               start_daemon):
    old = killed_holder(f"nightly-{way}")
    s, g, unsafe, idem = old["session"], old["goal"], old["unsafe"], old["idempotent"]
    sid, gid = s["id"], g["id"]
    assert s["created"] and s["claimed"] and s["worker_id"] == "doomed-agent"
    assert g["created"] and g["claimed"] and g["parent_id"] == sid
    assert (unsafe["effect"], idem["effect"]) == ("unsafe", "idempotent")
    assert unsafe["parent_id"] == idem["parent_id"] == gid

    # While the dead holder's lease is live, nobody may take the session: Conflict,
    # naming the holder and when its lease ends.
    assert now_ms() < s["lease_expires_at"], "the 1 s lease ended before the test could look"
    with pytest.raises(Conflict, match="doomed-agent") as busy:
        orch.resume_session(sid, "agent-2", ttl=60)
    assert busy.value.data["worker_id"] == "doomed-agent"
    assert busy.value.data["lease_expires_at"] == s["lease_expires_at"]
    with pytest.raises(Conflict, match="doomed-agent"):
        orch.start_session("agent-2", key=f"nightly-{way}", ttl=60)
    r = cli("session", "resume", str(sid), "--worker", "agent-2")
    assert r.code == 6 and "doomed-agent" in r.err, r
    assert orch.get_task(sid)["worker_id"] == "doomed-agent"

    sleep_past(max(c["lease_expires_at"] for c in old.values()))

    if way == "recover_then_resume":
        rec = orch.stale_recovery()
        got = {x["id"]: (x["status"], x["reason"]) for x in rec["recovered"]}
        assert got == {sid: ("pending", "lease_expired"),
                       gid: ("pending", "parent_lease_lost"),
                       unsafe["id"]: ("unknown", "parent_lease_lost"),
                       idem["id"]: ("pending", "parent_lease_lost")}
        assert orch.get_task(sid)["status"] == "pending"
        # The CLI resumes it (a real process) and prints the claim with the checkpoint.
        p = orch_cli("session", "resume", str(sid), "--worker", "agent-2", "--ttl", "60")
        assert p.returncode == 0, p.stderr
        new = json.loads(p.stdout)
        reason = "parent_lease_lost"
    elif way == "resume_takes_over":
        new = orch.resume_session(sid, "agent-2", ttl=60)
        reason = "parent_taken_over"
    else:
        new = orch.start_session("agent-2", key=f"nightly-{way}", ttl=60)
        assert (new["created"], new["claimed"]) == (False, True)
        reason = "parent_taken_over"

    assert new["id"] == sid and new["checkpoint"] == {"step": 2, "goal": gid}
    assert new["worker_id"] == "agent-2" and new["attempt"] == 2
    assert new["token"] != s["token"] and new["fence"] > max(c["fence"] for c in old.values())
    if reason == "parent_taken_over":
        taken = [e for e in events_of(orch, sid) if e["type"] == "taken_over"]
        assert len(taken) == 1
        assert taken[0]["detail"]["previous_worker"] == "doomed-agent"
        assert taken[0]["detail"]["previous_fence"] == s["fence"]

    # The children were recovered with the session: the unsafe call is unknown, the
    # idempotent one pending, and each says why.
    assert orch.get_task(unsafe["id"])["status"] == "unknown"
    assert orch.get_task(idem["id"])["status"] == "pending"
    assert orch.get_task(gid)["status"] == "pending"
    reasons = {}
    for item_id, status in ((gid, "pending"), (unsafe["id"], "unknown"),
                            (idem["id"], "pending")):
        expired = [e for e in events_of(orch, item_id) if e["type"] == "expired"]
        assert len(expired) == 1, item_id
        assert expired[0]["detail"]["status"] == status
        assert expired[0]["fence"] == {gid: g, unsafe["id"]: unsafe,
                                       idem["id"]: idem}[item_id]["fence"]
        reasons[item_id] = expired[0]["detail"]["reason"]
    assert reasons[gid] == reason

    # The new holder takes the goal back and gets the pending execution claimed for it;
    # the unknown one is reported, not handed out.
    g2 = orch.create_goal(sid, new["token"], key="g1")
    assert (g2["id"], g2["created"], g2["claimed"], g2["worker_id"]) == \
        (gid, False, True, "agent-2")
    i2 = orch.execute_tool_idempotent(gid, g2["token"], "fetch",
                                      {"url": "https://example.org"}, key="fetch",
                                      effect="idempotent")
    assert (i2["id"], i2["created"], i2["claimed"], i2["status"], i2["attempt"]) == \
        (idem["id"], False, True, "running", 2)
    assert i2["token"] != idem["token"] and i2["worker_id"] == "agent-2"
    u2 = orch.execute_tool_idempotent(gid, g2["token"], "send_email",
                                      {"to": "team@example.org"}, key="send")
    assert (u2["id"], u2["created"], u2["claimed"], u2["status"]) == \
        (unsafe["id"], False, False, "unknown")
    assert "token" not in u2
    assert types_of(orch, unsafe["id"]).count("claimed") == 1

    # The dead agent's tokens are refused everywhere: embedded, CLI, daemon.
    assert_fenced_out(orch, old)
    assert_cli_fenced_out(cli, old)
    p = orch_cli("heartbeat", str(sid), "--token", s["token"])
    assert p.returncode == 4 and p.stderr.startswith("orch: error: "), p
    p = orch_cli("tool", "exec", "--goal", str(gid), "--token", g["token"], "--tool", "x")
    assert p.returncode == 4, p
    d = start_daemon(db=db_path)
    with d.client() as c:
        assert_fenced_out(c, old)
    assert d.stop() == 0

    # resolve moves the unknown execution on; it is never run again.
    resolved = orch.resolve_task(unsafe["id"], "succeeded")
    assert resolved["status"] == "succeeded"
    u3 = orch.execute_tool_idempotent(gid, g2["token"], "send_email",
                                      {"to": "team@example.org"}, key="send")
    assert (u3["id"], u3["status"], u3["claimed"]) == (unsafe["id"], "succeeded", False)
    assert types_of(orch, unsafe["id"]).count("claimed") == 1
    report = orch.doctor()
    assert report["ok"], report["problems"]
    # Last, so that everything above is checked either way: the executions were
    # recovered for the same cause as their goal, and their events say so.
    assert reasons == {gid: reason, unsafe["id"]: reason, idem["id"]: reason}


def test_resume_of_a_live_session_exits_6_naming_the_holder(orch, orch_cli):
    s = orch.start_session("holder-1", key="busy", ttl=120)
    p = orch_cli("session", "resume", str(s["id"]), "--worker", "holder-2")
    assert p.returncode == 6, p
    assert p.stderr.startswith("orch: error: ") and "holder-1" in p.stderr
    assert "until" in p.stderr and p.stdout == ""
    p = orch_cli("session", "start", "--worker", "holder-2", "--key", "busy")
    assert p.returncode == 6 and "holder-1" in p.stderr, p
    row = orch.get_task(s["id"])
    assert (row["worker_id"], row["fence"], row["attempts"]) == ("holder-1", s["fence"], 1)
    # A finished session is returned as it stands, not claimed.
    orch.release_task(s["id"], s["token"], "succeeded", result={"ok": 1})
    p = orch_cli("session", "start", "--worker", "holder-2", "--key", "busy")
    assert p.returncode == 0, p
    out = json.loads(p.stdout)
    assert (out["id"], out["status"], out["created"], out["claimed"]) == \
        (s["id"], "succeeded", False, False)
    assert "token" not in out
    p = orch_cli("session", "resume", str(s["id"]), "--worker", "holder-2")
    assert p.returncode == 6, p
