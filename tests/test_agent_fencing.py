"""Cascade fencing as real agent processes see it, embedded and through a daemon whose own
recovery is kept out of the way: a child's write checks every ancestor's claim itself,
whenever recovery last ran; a released session's tree is fenced out and handed to the
next holder fresh; goals and tool executions are claimed only for their parent's holder,
never by a claim; a claim by id of an expired unsafe item makes it unknown and runs
nothing. Agents are tests/helpers/agent_steps.py processes; exit codes come from the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import db_rows, events_of, orch_process, sleep_past, snapshot, spawn
from helpers.daemon_wire import Raw

from orchestrator import LeaseLost, Orchestrator


@dataclass
class Mode:
    name: str
    where: str  # the database (embedded) or the daemon's socket
    cli_args: list[str]  # what the CLI needs to go the same way


@pytest.fixture(params=["embedded", "daemon"])
def mode(request, db_path) -> Mode:
    """The file itself, or a daemon on it that runs no recovery of its own during the
    test: what is checked here must not depend on a recovery pass."""
    if request.param == "embedded":
        Orchestrator(db_path).close()
        return Mode("embedded", str(db_path), [])
    d = request.getfixturevalue("start_daemon")("--recover-every", "3600", db=db_path)
    return Mode("daemon", str(d.sock), ["--socket", str(d.sock)])


class Agent:
    """One agent process: ``agent.ok(op, ...)`` / ``agent.refused(op, ...)``."""

    def __init__(self, mode: Mode, log: Path):
        self.proc = spawn("agent_steps.py", mode.name, mode.where, log=log, stdin=True)
        self.log = log
        assert self.proc.stdout.readline().strip() == "ready", log.read_text()

    def call(self, op: str, *args, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "args": args, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.log.read_text()
        return json.loads(line)

    def ok(self, op: str, *args, **kwargs):
        answer = self.call(op, *args, **kwargs)
        assert "ok" in answer, (op, answer)
        return answer["ok"]

    def refused(self, op: str, *args, **kwargs) -> dict:
        answer = self.call(op, *args, **kwargs)
        assert "error" in answer, (op, answer)
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=20) == 0, self.log.read_text()
        self.proc.stdout.close()


@pytest.fixture
def agents(mode, tmp_path):
    started: list[Agent] = []

    def start(name: str) -> Agent:
        started.append(Agent(mode, tmp_path / f"agent-{name}.err"))
        return started[-1]

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        for f in (a.proc.stdin, a.proc.stdout):
            if not f.closed:
                f.close()


def rows(db: Path, *ids: int) -> dict[int, tuple]:
    """(status, attempts, worker_id, fence) of each item, read from the file."""
    marks = ",".join("?" * len(ids))
    got = db_rows(db, f"SELECT id, status, attempts, worker_id, fence FROM items "
                      f"WHERE id IN ({marks})", ids)
    return {r[0]: r[1:] for r in got}


def events(db: Path, item_id: int) -> list[tuple]:
    """(seq, at, type, reason) of the item's events, oldest first."""
    return [(e["seq"], e["at"], e["type"], e["detail"].get("reason"))
            for e in events_of(db, item_id)]


def lease_lost(answer: dict, names: str) -> None:
    assert (answer["error"], answer["exit"]) == ("LeaseLost", 4), answer
    assert names in answer["message"], answer


def test_a_released_session_fences_out_its_goals_and_the_new_holder_gets_them_fresh(
        mode, agents, cli, db_path):
    a, b = agents("a"), agents("b")
    s = a.ok("start_session", "agent-a", key="nightly", ttl=60)
    g = a.ok("create_goal", s["id"], s["token"], key="g1", ttl=60)
    x = a.ok("execute_tool_idempotent", g["id"], g["token"], "send", {"n": 1}, key="x")
    y = a.ok("execute_tool_idempotent", g["id"], g["token"], "read", {"n": 2}, key="y",
             effect="idempotent")
    released = a.ok("release_task", s["id"], s["token"], "requeue")
    assert released["status"] == "pending"

    # The release and the fencing of the tree are one transaction: consecutive events
    # at one time, each child saying why.
    evs = {i: events(db_path, i)[-1] for i in (s["id"], g["id"], x["id"], y["id"])}
    assert evs[s["id"]][2] == "released"
    assert sorted(e[0] for e in evs.values()) == list(range(evs[s["id"]][0],
                                                            evs[s["id"]][0] + 4))
    assert len({e[1] for e in evs.values()}) == 1
    for child in (g, x, y):
        assert evs[child["id"]][2:] == ("expired", "parent_released")
    got = rows(db_path, g["id"], x["id"], y["id"])
    assert [got[i][0] for i in (g["id"], x["id"], y["id"])] == ["pending", "unknown",
                                                                  "pending"]
    r = cli(*mode.cli_args, "why", str(g["id"]))
    assert "fenced out" in r.out and "because its parent was released" in r.out, r

    s2 = b.ok("resume_session", s["id"], "agent-b", ttl=60)
    assert s2["fence"] > y["fence"] and s2["checkpoint"] is None

    # Every write of A's under the goal is refused: the API in A's process ...
    before = snapshot(db_path)
    for op, args in [("heartbeat", (g["id"], g["token"])),
                     ("checkpoint", (g["id"], g["token"], {"stale": True})),
                     ("execute_tool_idempotent", (g["id"], g["token"], "new", {})),
                     ("release_task", (g["id"], g["token"], "succeeded")),
                     ("heartbeat", (x["id"], x["token"])),
                     ("release_task", (y["id"], y["token"], "succeeded")),
                     ("create_goal", (s["id"], s["token"]))]:
        assert a.refused(op, *args)["exit"] == 4, op
    assert a.ok("verify", g["id"], g["token"])["valid"] is False
    # ... and the CLI, exit 4.
    gid, gt = str(g["id"]), g["token"]
    for args in (["heartbeat", gid, "--token", gt],
                 ["checkpoint", gid, "--token", gt, "--data", "{}"],
                 ["tool", "exec", "--goal", gid, "--token", gt, "--tool", "new"],
                 ["release", gid, "--token", gt, "--outcome", "succeeded"],
                 ["verify", gid, "--token", gt]):
        r = cli(*mode.cli_args, *args)
        assert r.code == 4, (args, r)
    assert snapshot(db_path) == before

    # B's goal with the same key is a new claim of the same goal, for B.
    g2 = b.ok("create_goal", s["id"], s2["token"], key="g1")
    assert (g2["id"], g2["created"], g2["claimed"], g2["worker_id"]) == \
        (g["id"], False, True, "agent-b")
    assert g2["fence"] > s2["fence"] > g["fence"] and g2["attempt"] == 2
    assert a.refused("heartbeat", g["id"], g["token"])["exit"] == 4
    assert b.ok("heartbeat", g["id"], g2["token"])["fence"] == g2["fence"]
    # The unsafe call that may have happened is reported, not run again.
    x2 = b.ok("execute_tool_idempotent", g["id"], g2["token"], "send", {"n": 1}, key="x")
    assert (x2["id"], x2["status"], x2["claimed"]) == (x["id"], "unknown", False)
    a.close()
    b.close()
    with Orchestrator(db_path) as o:
        assert o.doctor()["ok"]


def test_goals_and_tool_executions_are_claimed_only_through_their_parents_holder(
        mode, agents, cli, db_path):
    a, generic = agents("a"), agents("generic")
    s = a.ok("start_session", "agent-a", ttl=60)
    g = a.ok("create_goal", s["id"], s["token"], key="g", ttl=60)
    x = a.ok("execute_tool_idempotent", g["id"], g["token"], "read", {}, key="x",
             effect="idempotent")
    pending_goal = a.ok("create_goal", s["id"], s["token"], key="later")
    a.ok("release_task", pending_goal["id"], pending_goal["token"], "requeue")
    before = snapshot(db_path)

    for kinds in (["goal"], ["tool_execution"], ["task", "goal"]):
        r = generic.refused("claim_task", "generic", [f"session:{s['id']}", f"goal:{g['id']}"],
                            kinds=kinds)
        assert (r["error"], r["exit"], r["data"]["field"]) == ("InvalidInput", 2, "kinds"), r
    for item in (g, x, pending_goal):
        r = generic.refused("claim_task", "generic", item_id=item["id"])
        assert (r["error"], r["exit"], r["data"]["field"]) == ("InvalidInput", 2, "item_id"), r
        assert item["kind"] in r["message"]
    # release_and_claim: the next claim follows the same rule, and a refused next claim
    # undoes the release.
    r = a.refused("release_and_claim", x["id"], x["token"], "succeeded")
    assert (r["exit"], r["data"]["field"]) == (2, "kinds"), r
    r = a.refused("release_and_claim", g["id"], g["token"], "succeeded", kinds=["goal"])
    assert (r["exit"], r["data"]["field"]) == (2, "kinds"), r
    # The CLI offers no such kinds and refuses such ids.
    r = cli(*mode.cli_args, "claim", "--worker", "generic", "--kind", "goal")
    assert r.code == 2 and "goal" in r.err, r
    p = orch_process(*mode.cli_args, "claim", "--worker", "generic", "--item",
                     str(pending_goal["id"]), db=db_path)
    assert p.returncode == 2 and "item_id" in p.stderr, p
    assert snapshot(db_path) == before
    assert a.ok("verify", x["id"], x["token"])["valid"]

    # The parent's holder takes the pending goal back; a release of a tool execution
    # may go on to a task.
    back = a.ok("create_goal", s["id"], s["token"], key="later")
    assert (back["id"], back["claimed"]) == (pending_goal["id"], True)
    out = a.ok("release_and_claim", x["id"], x["token"], "succeeded", kinds=["task"])
    assert (out["released"]["status"], out["next"]) == ("succeeded", None)
    a.close()
    generic.close()


def test_a_goal_outliving_its_session_is_refused_before_any_recovery(
        mode, agents, cli, db_path):
    a = agents("a")
    s = a.ok("start_session", "agent-a", ttl=0.6)
    g = a.ok("create_goal", s["id"], s["token"], key="g", ttl=60)
    x = a.ok("execute_tool_idempotent", g["id"], g["token"], "send", {}, key="x", ttl=60)
    sleep_past(s["lease_expires_at"])
    before = snapshot(db_path)
    # Nothing has recovered the session: it is still running on file, lease over.
    assert rows(db_path, s["id"])[s["id"]][0] == "running"

    session = f"session {s['id']}"
    lease_lost(a.refused("heartbeat", g["id"], g["token"], ttl=60), session)
    lease_lost(a.refused("checkpoint", g["id"], g["token"], {"step": 1}), session)
    lease_lost(a.refused("execute_tool_idempotent", g["id"], g["token"], "send", {"n": 2}),
               session)
    lease_lost(a.refused("create_goal", s["id"], s["token"]), "expired")
    lease_lost(a.refused("heartbeat", x["id"], x["token"]), session)
    lease_lost(a.refused("checkpoint", x["id"], x["token"], {}), session)
    lease_lost(a.refused("release_task", x["id"], x["token"], "succeeded"), session)
    lease_lost(a.refused("release_task", g["id"], g["token"], "succeeded"), session)
    assert a.ok("verify", g["id"], g["token"])["valid"] is False
    assert a.ok("verify", x["id"], x["token"])["valid"] is False
    r = cli(*mode.cli_args, "heartbeat", str(g["id"]), "--token", g["token"])
    assert r.code == 4 and session in r.err, r
    r = cli(*mode.cli_args, "tool", "exec", "--goal", str(g["id"]), "--token", g["token"],
            "--tool", "send")
    assert r.code == 4 and session in r.err, r
    r = cli(*mode.cli_args, "why", str(g["id"]))
    assert r.code == 0 and f"{session} is gone" in r.out and "refused" in r.out, r
    assert snapshot(db_path) == before
    a.close()


def test_a_child_made_under_an_earlier_claim_of_its_parent_is_refused(orch, db_path):
    """A file written before a release fenced the children: a session released and
    claimed again while its goal still runs under the old claim."""
    import apsw

    a = orch.start_session("agent-a", ttl=60)
    g = orch.create_goal(a["id"], a["token"], key="g", ttl=60)
    old_goal = db_rows(db_path, "SELECT status, token_hash, lease_expires_at, heartbeat_at "
                                "FROM items WHERE id = ?", (g["id"],))[0]
    orch.release_task(a["id"], a["token"], "requeue")
    b = orch.resume_session(a["id"], "agent-b", ttl=60)
    conn = apsw.Connection(str(db_path))
    try:  # put the goal back as an older orch left it
        conn.execute("UPDATE items SET status = ?, token_hash = ?, lease_expires_at = ?, "
                     "heartbeat_at = ? WHERE id = ?", (*old_goal, g["id"]))
    finally:
        conn.close()
    assert orch.get_task(g["id"])["status"] == "running"

    with pytest.raises(LeaseLost, match=f"session {a['id']} .*claimed again, fence "
                                        f"{b['fence']}"):
        orch.heartbeat(g["id"], g["token"])
    with pytest.raises(LeaseLost, match="claimed again"):
        orch.execute_tool_idempotent(g["id"], g["token"], "send", {})
    assert orch.verify(g["id"], g["token"])["valid"] is False
    # The new holder's create_goal with the key fences the old claim and claims anew.
    g2 = orch.create_goal(a["id"], b["token"], key="g")
    assert (g2["id"], g2["claimed"], g2["worker_id"]) == (g["id"], True, "agent-b")
    assert g2["fence"] > b["fence"]
    last = [e for e in orch.list_events(item_id=g["id"]) if e["type"] == "expired"][-1]
    assert last["detail"]["reason"] == "parent_lease_lost"


def test_claim_by_id_of_an_expired_unsafe_item_makes_it_unknown_and_runs_nothing(
        mode, agents, cli, db_path):
    a = agents("a")
    unsafe = a.ok("submit_task", {"job": "charge card"}, queue="pay", effect="unsafe")
    a.ok("claim_task", "w1", ["pay"], ttl=0.3)
    last = a.ok("submit_task", {"job": "once"}, queue="once", max_attempts=1)
    a.ok("claim_task", "w1", ["once"], ttl=0.3)
    asked = a.ok("submit_task", {"job": "stop"}, queue="stop")
    a.ok("claim_task", "w1", ["stop"], ttl=0.3)
    a.ok("cancel_task", asked["id"])
    s = a.ok("start_session", "agent-a", ttl=60)
    g = a.ok("create_goal", s["id"], s["token"], ttl=60)
    x = a.ok("execute_tool_idempotent", g["id"], g["token"], "send", {}, key="x", ttl=0.3)
    sleep_past(x["lease_expires_at"])

    for item, status in ((unsafe, "unknown"), (x, "unknown")):
        p = orch_process(*mode.cli_args, "claim", "--worker", "w2", "--item",
                         str(item["id"]), db=db_path)
        assert p.returncode == 6 and p.stdout == "", p
        assert p.stderr.startswith("orch: error: ") and f"now {status}" in p.stderr, p
        assert rows(db_path, item["id"])[item["id"]][:3] == (status, 1, "w1" if item is unsafe
                                                             else "agent-a")
        assert [e[2:] for e in events(db_path, item["id"])] == [
            ("submitted", None), ("claimed", None), ("expired", "lease_expired")]
    for item, status in ((last, "dead"), (asked, "cancelled")):
        r = cli(*mode.cli_args, "claim", "--worker", "w2", "--item", str(item["id"]))
        assert r.code == 6 and f"now {status}" in r.err, r
        assert rows(db_path, item["id"])[item["id"]][:2] == (status, 1)
    # Asked again: the item is settled now, and still not run.
    r = cli(*mode.cli_args, "claim", "--worker", "w2", "--item", str(unsafe["id"]))
    assert r.code == 6 and "unknown" in r.err, r
    # The goal's holder sees the call as unknown, not handed back to run.
    x2 = a.ok("execute_tool_idempotent", g["id"], g["token"], "send", {}, key="x")
    assert (x2["status"], x2["claimed"], x2["attempts"]) == ("unknown", False, 1)
    a.close()
    with Orchestrator(db_path) as o:
        assert o.doctor()["ok"]


def test_claim_by_id_recovery_commits_inside_a_daemon_group(start_daemon, db_path):
    """A batch commits as one group, a savepoint per request: the refused claim's
    recovery stands beside the other requests of its group."""
    d = start_daemon("--recover-every", "3600", db=db_path)
    with d.client() as c:
        item = c.submit_task({"job": "x"}, effect="unsafe")
        c.claim_task("w1", ttl=0.2)
        sleep_past(c.get_task(item["id"])["lease_expires_at"])
    with Raw(d.sock) as raw:
        raw.send_json([
            {"jsonrpc": "2.0", "id": 1, "method": "claimTask",
             "params": {"worker_id": "w2", "item_id": item["id"]}},
            {"jsonrpc": "2.0", "id": 2, "method": "submitTask", "params": {"payload": 1}},
        ])
        replies = {r["id"]: r for r in raw.reply()}
    assert replies[1]["error"]["code"] == 1003, replies
    assert replies[1]["error"]["data"]["status"] == "unknown"
    assert "result" in replies[2]
    assert rows(db_path, item["id"])[item["id"]][:2] == ("unknown", 1)
    assert d.stop() == 0
