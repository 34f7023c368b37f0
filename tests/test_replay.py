"""``orch replay --session ID``: the session, its goals and their tool executions, with
statuses, keys, attempts, fences and the events behind them, as text and as JSON, and
never a token."""

from __future__ import annotations

import re

import pytest


def walk_keys(value) -> set[str]:
    """Every dict key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in walk_keys(v)}
    return set()


HEAD = re.compile(r"^( *)(session|goal|tool_execution) (\d+)  (\S+)  key=(\S+)  "
                  r"attempts=(\d+)  fence=(\S+)  created=\S+  updated=\S+$")


@pytest.fixture
def two_goals(orch) -> dict:
    """A session with two goals and three executions, every token kept."""
    tokens = []
    s = orch.start_session("replayer", key="replay-me", payload={"job": "r"}, ttl=60)
    orch.checkpoint(s["id"], s["token"], {"step": 1})
    g1 = orch.create_goal(s["id"], s["token"], key="g-one", payload={"goal": 1})
    g2 = orch.create_goal(s["id"], s["token"], key="g-two", payload={"goal": 2})
    e1 = orch.execute_tool_idempotent(g1["id"], g1["token"], "search", {"q": "a"},
                                      key="k-search")
    orch.release_task(e1["id"], e1["token"], "succeeded", result={"hits": 3})
    e2 = orch.execute_tool_idempotent(g1["id"], g1["token"], "write", {"f": "x"},
                                      effect="idempotent")
    orch.release_task(e2["id"], e2["token"], "failed", error="disk full", retry_in=0)
    e2b = orch.execute_tool_idempotent(g1["id"], g1["token"], "write", {"f": "x"},
                                       effect="idempotent")
    assert (e2b["id"], e2b["claimed"], e2b["attempt"]) == (e2["id"], True, 2)
    orch.release_task(e2["id"], e2b["token"], "succeeded", result={"written": True})
    e3 = orch.execute_tool_idempotent(g2["id"], g2["token"], "email", {"to": "x@y"},
                                      key="k-mail")
    orch.release_task(e3["id"], e3["token"], "failed", error="smtp down", no_retry=True)
    orch.release_task(g1["id"], g1["token"], "succeeded", result={"goal": "done"})
    tokens = [c["token"] for c in (s, g1, g2, e1, e2, e2b, e3)]
    return {"s": s, "g1": g1, "g2": g2, "e1": e1, "e2": e2, "e3": e3, "tokens": tokens}


def test_replay_text_draws_the_tree(two_goals, orch_cli):
    t = two_goals
    p = orch_cli("replay", "--session", str(t["s"]["id"]))
    assert p.returncode == 0, p.stderr
    text = p.stdout
    for token in t["tokens"]:
        assert token not in text
    lines = text.splitlines()
    heads = [(i, HEAD.match(line)) for i, line in enumerate(lines)]
    heads = [(i, m) for i, m in heads if m]
    nodes = [(len(m[1]) // 2, m[2], int(m[3]), m[4], m[5], int(m[6])) for _, m in heads]
    sid, g1, g2 = t["s"]["id"], t["g1"]["id"], t["g2"]["id"]
    e1, e2, e3 = t["e1"]["id"], t["e2"]["id"], t["e3"]["id"]
    # Depth-first: the session, goal 1 and its two executions, goal 2 and its one.
    assert nodes == [
        (0, "session", sid, "running", "replay-me", 1),
        (1, "goal", g1, "succeeded", "g-one", 1),
        (2, "tool_execution", e1, "succeeded", "k-search", 1),
        (2, "tool_execution", e2, "succeeded", t["e2"]["key"], 2),
        (1, "goal", g2, "running", "g-two", 1),
        (2, "tool_execution", e3, "failed", "k-mail", 1),
    ]
    assert t["e2"]["key"].startswith("auto:write:")

    def block(n: int) -> str:  # the lines of the n-th node, up to the next node
        start = heads[n][0]
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        return "\n".join(lines[start:end])

    assert "checkpoint" in block(0) and "claimed replayer" in block(0)
    assert 'result={"goal":"done"}' in block(1)
    assert "tool=search" in block(2) and 'input={"q":"a"}' in block(2)
    assert 'result={"hits":3}' in block(2)
    assert 'result={"written":true}' in block(3)
    b3 = block(3)
    assert b3.count(" claimed ") == 2 and "failed -> pending" in b3
    assert "succeeded -> succeeded" in b3
    assert "tool=email" in block(5) and "error=smtp down" in block(5)
    assert "failed -> failed" in block(5)
    for n in range(6):
        assert "submitted" in block(n)


def test_replay_json_has_the_same_structure(two_goals, cli):
    t = two_goals
    r = cli("--json", "replay", "--session", str(t["s"]["id"]))
    assert r.code == 0, r
    for token in t["tokens"]:
        assert token not in r.out
    tree = r.json
    assert not {k for k in walk_keys(tree) if "token" in k}
    assert (tree["id"], tree["kind"], tree["status"], tree["key"]) == \
        (t["s"]["id"], "session", "running", "replay-me")
    assert tree["checkpoint"] == {"step": 1} and tree["payload"] == {"job": "r"}
    assert [e["type"] for e in tree["events"]] == ["submitted", "claimed", "checkpoint"]
    g1, g2 = tree["goals"]
    assert (g1["id"], g1["key"], g1["status"], g1["result"]) == \
        (t["g1"]["id"], "g-one", "succeeded", {"goal": "done"})
    assert (g2["id"], g2["key"], g2["status"]) == (t["g2"]["id"], "g-two", "running")
    assert all(g["parent_id"] == tree["id"] for g in (g1, g2))
    e1, e2 = g1["tool_executions"]
    (e3,) = g2["tool_executions"]
    assert (e1["id"], e1["key"], e1["status"], e1["attempts"], e1["result"]) == \
        (t["e1"]["id"], "k-search", "succeeded", 1, {"hits": 3})
    assert e1["payload"] == {"tool": "search", "input": {"q": "a"}}
    assert (e2["id"], e2["status"], e2["attempts"], e2["result"], e2["error"]) == \
        (t["e2"]["id"], "succeeded", 2, {"written": True}, None)
    assert [(e["type"], e["detail"].get("outcome")) for e in e2["events"]] == [
        ("submitted", None), ("claimed", None), ("released", "failed"),
        ("claimed", None), ("released", "succeeded")]
    assert [e["fence"] for e in e2["events"] if e["type"] == "claimed"] == \
        sorted({e["fence"] for e in e2["events"] if e["type"] == "claimed"})
    assert (e3["id"], e3["key"], e3["status"], e3["error"]) == \
        (t["e3"]["id"], "k-mail", "failed", "smtp down")
    for node in (tree, g1, g2, e1, e2, e3):
        assert node["created_at"] and node["updated_at"]
        assert node["events"] and all(e["item_id"] == node["id"] for e in node["events"])
    assert "goals" not in g1 and "tool_executions" not in e1
    # Replay is for sessions.
    assert cli("replay", "--session", str(t["g1"]["id"])).code == 2
    assert cli("replay", "--session", "999999").code == 5
