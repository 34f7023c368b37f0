"""Agent records (SPEC sections 4, 6, 7 and 10; issue 4): sessions, goals and idempotent
tool executions as lease-protected work items, the Lease helper, replay and why.

Real database files, real processes (racers, a holder killed with SIGKILL, the README
example), a real daemon on a Unix socket. Helper processes: tests/helpers/agent_*.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import db_rows, racer_answer, racers, racers_finish, racers_ready, release_barrier
from freezegun import freeze_time

from orchestrator import Conflict, LeaseLost, Orchestrator
from orchestrator.clock import now_ms

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "helpers"
EXAMPLE = ROOT / "scripts" / "agent_example.py"

LEASE_LOST, CONFLICT, INVALID_PARAMS = 1001, 1003, -32602


# --- small tools ----------------------------------------------------------------------


def kill9(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(timeout=10) == -signal.SIGKILL


def close_pipes(p: subprocess.Popen) -> None:
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            f.close()


def sleep_until(ms: int, margin_s: float = 0.05) -> None:
    time.sleep(max(0.0, (ms - now_ms()) / 1000) + margin_s)
    assert now_ms() > ms


def events_of(api, item_id: int) -> list[dict]:
    return api.list_events(item_id=item_id, limit=0)


def types_of(api, item_id: int) -> list[str]:
    return [e["type"] for e in events_of(api, item_id)]


def walk_keys(value) -> set[str]:
    """Every dict key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in walk_keys(v)}
    return set()


# --- 1. one execution per key, 100 processes at once ------------------------------------


def race(args_for, log_dir: Path, n: int = 100) -> tuple[list[dict], list[dict]]:
    with racers("agent_racer.py", n, args_for, log_dir) as procs:
        release_barrier(procs)
        one_key = [racer_answer(p, i, log_dir) for i, p in enumerate(procs)]
        racers_ready(procs)
        release_barrier(procs)
        ten_keys = [racer_answer(p, i, log_dir) for i, p in enumerate(procs)]
        racers_finish(procs, log_dir)
    return one_key, ten_keys


def check_race(one_key: list[dict], ten_keys: list[dict]) -> tuple[int, dict[str, int]]:
    """Exactly one execution and one created:true per key; returns the ids."""
    errors = [r for r in one_key + ten_keys if "error" in r]
    assert not errors, errors[:3]
    assert len({r["id"] for r in one_key}) == 1
    winners = [r for r in one_key if r["created"]]
    assert len(winners) == 1, winners
    assert winners[0]["claimed"] and winners[0]["has_token"] and winners[0]["status"] == "running"
    for r in one_key:
        if not r["created"]:
            # The winner holds it under a live lease: reported as is, no token.
            assert (r["claimed"], r["has_token"], r["status"]) == (False, False, "running"), r
            assert r["fence"] == winners[0]["fence"]
    one = one_key[0]["id"]

    by_key: dict[str, set[int]] = {}
    created: Counter = Counter()
    for i, r in enumerate(ten_keys):
        key = f"k{i % 10}"
        by_key.setdefault(key, set()).add(r["id"])
        created[key] += r["created"]
        assert r["claimed"] == r["created"] == r["has_token"], r
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    assert created == Counter({f"k{j}": 1 for j in range(10)})
    ids = {k: next(iter(v)) for k, v in by_key.items()}
    assert len(set(ids.values())) == 10 and one not in ids.values()
    return one, ids


def check_executions(api, goal_id: int, one: int, ids: dict[str, int]) -> None:
    """The file holds exactly these 11 executions, each submitted and claimed once."""
    execs = api.list_tasks(kind="tool_execution", limit=0)
    assert sorted(e["id"] for e in execs) == sorted([one, *ids.values()])
    keys = {e["id"]: e["key"] for e in execs}
    assert keys[one] == "the-one" and all(keys[v] == k for k, v in ids.items())
    for e in execs:
        assert e["parent_id"] == goal_id and e["queue"] == f"goal:{goal_id}"
        assert (e["status"], e["attempts"], e["effect"]) == ("running", 1, "unsafe")
        assert Counter(types_of(api, e["id"])) == Counter({"submitted": 1, "claimed": 1})


def again(api, goal: dict, one: int, ids: dict[str, int]) -> None:
    """The same calls once more: the same ids, created False, nothing run again."""
    for key, want in [("the-one", one), *ids.items()]:
        r = api.execute_tool_idempotent(goal["id"], goal["token"], "search", {"q": key},
                                        key=key)
        assert (r["id"], r["created"], r["claimed"], r["status"]) == \
            (want, False, False, "running"), r
        assert "token" not in r


@pytest.mark.slow
def test_hundred_processes_one_key_through_the_daemon_and_after_a_restart(start_daemon,
                                                                          tmp_path):
    d = start_daemon()
    with d.client() as c:
        s = c.start_session("racing-agent", ttl=600)
        g = c.create_goal(s["id"], s["token"], ttl=600)
    t0 = time.monotonic()
    one_key, ten_keys = race(lambda i: ["daemon", str(d.sock), str(g["id"]), g["token"],
                                        str(i)], tmp_path)
    assert time.monotonic() - t0 < 30
    one, ids = check_race(one_key, ten_keys)
    with d.client() as c:
        check_executions(c, g["id"], one, ids)

    assert d.stop() == 0
    d2 = start_daemon(db=d.db, sock=d.sock)  # the same files
    with d2.client() as c:
        again(c, g, one, ids)
        check_executions(c, g["id"], one, ids)
    assert d2.stop() == 0
    with Orchestrator(d.db) as o:
        report = o.doctor()
        assert report["ok"], report["problems"]


@pytest.mark.slow
def test_hundred_processes_one_key_embedded(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        s = o.start_session("racing-agent", ttl=600)
        g = o.create_goal(s["id"], s["token"], ttl=600)
    t0 = time.monotonic()
    one_key, ten_keys = race(lambda i: ["embedded", str(db_path), str(g["id"]), g["token"],
                                        str(i)], tmp_path)
    assert time.monotonic() - t0 < 30
    one, ids = check_race(one_key, ten_keys)
    with Orchestrator(db_path) as o:  # a fresh process-side handle on the file
        check_executions(o, g["id"], one, ids)
        again(o, g, one, ids)
        check_executions(o, g["id"], one, ids)
        report = o.doctor()
        assert report["ok"], report["problems"]


# --- 2. the holder of a session is killed with SIGKILL ----------------------------------


@pytest.fixture
def killed_holder(db_path, tmp_path):
    """Start agent_holder.py (ttl 1 s), read its claims, SIGKILL it; return the claims."""
    def start(key: str) -> dict:
        with open(tmp_path / "holder.err", "w") as err:
            p = subprocess.Popen([sys.executable, str(HELPERS / "agent_holder.py"),
                                  str(db_path), "1", key],
                                 stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            line = p.stdout.readline()
            assert line, (tmp_path / "holder.err").read_text()
            claims = json.loads(line)
        finally:
            kill9(p)
            close_pipes(p)
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

    sleep_until(max(c["lease_expires_at"] for c in old.values()))

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


# --- 3. the cascade: a holder's lost lease recovers its running descendants ---------------


T0 = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def clock():
    with freeze_time(T0) as frozen:
        yield frozen


# --- 4. the Lease context manager, embedded and through the daemon ----------------------


@pytest.fixture(params=["embedded", "daemon"])
def apis(request, db_path):
    """(the holder's handle, an outsider's handle) on one file, embedded or via a daemon."""
    if request.param == "embedded":
        pair = (Orchestrator(db_path), Orchestrator(db_path))
    else:
        d = request.getfixturevalue("start_daemon")(db=db_path)
        pair = (d.client(), d.client())
    yield pair
    for a in pair:
        a.close()


def claimed_task(api, ttl: float, **kw) -> dict:
    item = api.submit_task({"job": "lease"}, queue="lease", **kw)
    c = api.claim_task("w1", ["lease"], ttl=ttl)
    assert c is not None and c["id"] == item["id"]
    return c


def test_lease_heartbeats_keep_a_short_lease_alive(apis):
    api, outside = apis
    c = claimed_task(api, ttl=0.75)
    with api.hold(c) as lease:
        assert lease.every == pytest.approx(0.25)
        time.sleep(2.0)  # well past the ttl
        lease.check()
        assert not lease.lost.is_set()
        v = outside.verify(c["id"], c["token"])
        assert v == {"valid": True, "fence": c["fence"], "status": "running"}
        assert outside.get_task(c["id"])["lease_expires_at"] > c["lease_expires_at"] + 1000
        lease.result = {"answer": 42}
    row = outside.get_task(c["id"])
    assert (row["status"], row["result"], row["fence"], row["attempts"]) == \
        ("succeeded", {"answer": 42}, c["fence"], 1)
    evs = events_of(outside, c["id"])
    beats = [e for e in evs if e["type"] == "heartbeat"]
    assert len(beats) >= 4 and all(e["fence"] == c["fence"] for e in beats)
    types = [e["type"] for e in evs]
    assert "expired" not in types and "taken_over" not in types
    assert evs[-1]["type"] == "released" and evs[-1]["detail"]["outcome"] == "succeeded"


def assert_not_released(outside, c: dict, taken: dict) -> None:
    row = outside.get_task(c["id"])
    assert (row["status"], row["worker_id"], row["fence"]) == ("running", "w2", taken["fence"])
    assert "released" not in types_of(outside, c["id"])
    assert outside.verify(c["id"], c["token"])["valid"] is False
    assert outside.verify(c["id"], taken["token"])["valid"] is True


def test_lease_rejected_heartbeat_after_outside_expiry_and_takeover(apis):
    api, outside = apis
    c = claimed_task(api, ttl=30)
    with pytest.raises(LeaseLost), api.hold(c, heartbeat_every=0.1) as lease:
        taken, deadline = None, time.monotonic() + 10
        while taken is None and time.monotonic() < deadline:
            try:  # end the lease from outside, then take the item over
                outside.heartbeat(c["id"], c["token"], ttl=0.001)
            except LeaseLost:
                pass
            time.sleep(0.01)
            try:
                taken = outside.claim_task("w2", ttl=30, item_id=c["id"])
            except Conflict:
                pass  # the holder's heartbeat came first; again
        assert taken is not None and taken["fence"] > c["fence"]
        assert lease.lost.wait(5), "the rejected heartbeat did not set lost"
        lease.check()
        pytest.fail("check() did not raise after the lease was lost")
    assert_not_released(outside, c, taken)


def test_lease_rejected_heartbeat_after_takeover_by_claim(apis):
    api, outside = apis
    c = claimed_task(api, ttl=0.3)
    # The first heartbeat comes after the 0.3 s lease has ended and been taken over.
    with pytest.raises(LeaseLost), api.hold(c, heartbeat_every=0.5) as lease:
        sleep_until(c["lease_expires_at"])
        taken = outside.claim_task("w2", ttl=30, item_id=c["id"])
        assert taken["fence"] > c["fence"]
        assert lease.lost.wait(5), "the rejected heartbeat did not set lost"
        with pytest.raises(LeaseLost):
            lease.checkpoint({"late": True})
        lease.check()
        pytest.fail("check() did not raise after the lease was lost")
    assert_not_released(outside, c, taken)
    assert "checkpoint" not in types_of(outside, c["id"])


def test_lease_check_raises_after_a_pause_longer_than_the_ttl(db_path, tmp_path):
    """A holder stopped (SIGSTOP) past its lease's end runs again: its next check()
    raises before any heartbeat was refused. Its heartbeat is not due (a long interval
    stands for any late heartbeat: a busy daemon, a locked file), so only check()'s
    own deadline can tell."""
    with open(tmp_path / "holder.err", "w") as err:
        p = subprocess.Popen([sys.executable, str(HELPERS / "paused_holder.py"),
                              str(db_path), "1", "3600"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        item_id = int(p.stdout.readline())
        assert p.stdout.readline().strip() == "ready", (tmp_path / "holder.err").read_text()
        p.stdin.write("check\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ok"
        os.kill(p.pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # the 1 s lease ends meanwhile
            p.stdin.write("check\n")  # waiting for it the moment it runs again
            p.stdin.flush()
        finally:
            os.kill(p.pid, signal.SIGCONT)
        assert p.stdout.readline().strip() == "lost"
        [(ends,)] = db_rows(db_path, "SELECT lease_expires_at FROM items WHERE id = ?",
                            (item_id,))
        assert ends < now_ms()  # it had really ended: "ok" would have been a lie
    finally:
        p.stdin.close()
        if p.wait(10) != 0:
            pytest.fail((tmp_path / "holder.err").read_text())
        p.stdout.close()


def test_lease_exception_releases_failed_and_reraises(apis):
    api, outside = apis
    c = claimed_task(api, ttl=10)
    with pytest.raises(ValueError, match="boom"), api.hold(c):
        raise ValueError("boom")
    row = outside.get_task(c["id"])
    assert (row["status"], row["error"], row["attempts"]) == ("pending", "ValueError: boom", 1)
    last = events_of(outside, c["id"])[-1]
    assert last["type"] == "released" and last["fence"] == c["fence"]
    assert last["detail"]["outcome"] == "failed"
    # Out of attempts, the same is dead.
    c = claimed_task(api, ttl=10, max_attempts=1)
    with pytest.raises(KeyError), api.hold(c):
        {}["missing"]
    row = outside.get_task(c["id"])
    assert row["status"] == "dead" and row["error"].startswith("KeyError")


def test_lease_sees_cancel_requested_on_its_next_heartbeat(apis):
    api, outside = apis
    c = claimed_task(api, ttl=0.6)
    with pytest.raises(RuntimeError, match="asked to stop"), api.hold(c) as lease:
        assert lease.cancel_requested is False
        assert outside.cancel_task(c["id"])["cancel_requested"] is True
        deadline = time.monotonic() + 5
        while not lease.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.cancel_requested is True
        raise RuntimeError("asked to stop")
    row = outside.get_task(c["id"])
    assert row["status"] == "cancelled"  # a holder that gives up after a cancel request


def test_lease_holds_an_agent_session_with_goal_and_tool(apis):
    api, outside = apis
    s = api.start_session("agent-l", ttl=0.9)
    with api.hold(s) as session:
        g = api.create_goal(s["id"], s["token"], key="g")
        with api.hold(g):
            call = api.execute_tool_idempotent(g["id"], g["token"], "t", {"x": 1})
            with api.hold(call) as tool:
                time.sleep(1.5)  # longer than every ttl: all three are heartbeated
                tool.result = {"ok": True}
        session.checkpoint({"done": 1})
    for item_id, result in ((s["id"], None), (g["id"], None), (call["id"], {"ok": True})):
        row = outside.get_task(item_id)
        assert (row["status"], row["attempts"], row["result"]) == ("succeeded", 1, result)
        assert "expired" not in types_of(outside, item_id)
    assert outside.get_task(s["id"])["checkpoint"] == {"done": 1}


def test_lease_holder_that_writes_while_heartbeating_keeps_its_lease(apis):
    """The holder checkpoints all the time while its heartbeat thread beats: the two
    writers of one process must not hold each other up past the ttl."""
    api, outside = apis
    c = claimed_task(api, ttl=0.75)
    n = 0
    with api.hold(c) as lease:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            lease.checkpoint({"step": n})
            n += 1
            time.sleep(0.005)
        lease.check()
        lease.result = {"steps": n}
    row = outside.get_task(c["id"])
    assert (row["status"], row["checkpoint"], row["result"]) == \
        ("succeeded", {"step": n - 1}, {"steps": n})
    assert types_of(outside, c["id"]).count("heartbeat") >= 4


# --- 5. replay and why ------------------------------------------------------------------


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


def test_why(orch, cli):
    def why(item_id: int) -> str:
        r = cli("why", str(item_id))
        assert r.code == 0, r
        j = cli("--json", "why", str(item_id))
        assert j.code == 0 and j.json["text"] == r.out.strip() and j.json["id"] == item_id
        return r.out.strip()

    # pending, after a failed attempt with a retry scheduled
    a = orch.submit_task({"n": 1}, queue="why")
    c = orch.claim_task("w1", ["why"], ttl=30)
    orch.release_task(a["id"], c["token"], "failed", error="flaky", retry_in=60)
    text = why(a["id"])
    assert text.startswith("pending:") and "retry 2 of 3" in text and "after failure" in text
    assert "flaky" in text and re.search(r"claimable in (59|60)(\.\d)? s", text), text
    # running
    b = orch.submit_task({"n": 2}, queue="why")
    c = orch.claim_task("w-run", ["why"], ttl=30)
    text = why(b["id"])
    assert text.startswith("running:") and "held by w-run" in text, text
    assert re.search(r"lease ends in (29|30)(\.\d)? s", text), text
    # unknown: an unsafe tool execution whose lease was lost
    s = orch.start_session("agent-why", ttl=60)
    g = orch.create_goal(s["id"], s["token"])
    e = orch.execute_tool_idempotent(g["id"], g["token"], "charge", {"eur": 5}, ttl=0.05)
    time.sleep(0.1)
    assert orch.stale_recovery()["count"] == 1
    text = why(e["id"])
    assert text.startswith("unknown:") and "tool execution" in text, text
    assert f"orch resolve {e['id']}" in text
    # dead: out of attempts
    d = orch.submit_task({"n": 3}, queue="why", max_attempts=1)
    c = orch.claim_task("w1", ["why"], ttl=30)
    orch.release_task(d["id"], c["token"], "failed", error="broken")
    text = why(d["id"])
    assert text.startswith("dead:") and "broken" in text, text
    # succeeded
    ok = orch.submit_task({"n": 4}, queue="why")
    c = orch.claim_task("w-ok", ["why"], ttl=30)
    orch.release_task(ok["id"], c["token"], "succeeded")
    text = why(ok["id"])
    assert text.startswith("succeeded:") and "w-ok" in text and "1 attempt" in text, text
    # cancelled before it ran
    x = orch.submit_task({"n": 5}, queue="why")
    orch.cancel_task(x["id"])
    text = why(x["id"])
    assert text.startswith("cancelled:") and "before it ran" in text, text
    # no such item
    r = cli("why", "999999")
    assert r.code == 5 and r.err.startswith("orch: error: ")


# --- 6. the protocol methods over a raw socket ------------------------------------------


class Wire:
    """One raw connection: a JSON-RPC line out, a line back."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""
        self.n = 0

    def call(self, method: str, params: dict) -> dict:
        self.n += 1
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": self.n, "method": method,
                                      "params": params}).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        assert reply["jsonrpc"] == "2.0" and reply["id"] == self.n
        return reply

    def ok(self, method: str, params: dict):
        reply = self.call(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def err(self, method: str, params: dict) -> dict:
        reply = self.call(method, params)
        assert "error" in reply and "result" not in reply, reply
        return reply["error"]

    def close(self) -> None:
        self.sock.close()


def test_agent_methods_over_the_raw_protocol(start_daemon):
    d = start_daemon()
    w = Wire(d.sock)
    try:
        # startSession: created and claimed; the same key while it is held: CONFLICT.
        s = w.ok("startSession", {"worker_id": "a1", "key": "wire", "payload": {"p": 1},
                                  "ttl": 30})
        assert (s["kind"], s["status"], s["created"], s["claimed"], s["worker_id"]) == \
            ("session", "running", True, True, "a1")
        assert s["token"] and s["lease_expires_at"] > now_ms() + 20_000
        e = w.err("startSession", {"worker_id": "a2", "key": "wire"})
        assert e["code"] == CONFLICT and e["data"]["worker_id"] == "a1"
        assert "a1" in e["message"]
        e = w.err("startSession", {"worker_id": "a2", "ttl": 0})
        assert e["code"] in (INVALID_PARAMS, 1004) and e["data"]["field"] == "ttl"

        # createGoal: with the session's token; a wrong token is LEASE_LOST.
        g = w.ok("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g"})
        assert (g["kind"], g["parent_id"], g["created"], g["claimed"], g["worker_id"]) == \
            ("goal", s["id"], True, True, "a1")
        again = w.ok("createGoal", {"session_id": s["id"], "token": s["token"], "key": "g"})
        assert (again["id"], again["created"], again["claimed"]) == (g["id"], False, False)
        e = w.err("createGoal", {"session_id": s["id"], "token": "not-the-token"})
        assert e["code"] == LEASE_LOST

        # executeToolIdempotent: one execution per key; a stale token is LEASE_LOST; a
        # session is not a goal.
        x = w.ok("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                           "tool": "send", "input": {"to": "t"}, "key": "x"})
        assert (x["kind"], x["effect"], x["created"], x["claimed"]) == \
            ("tool_execution", "unsafe", True, True) and x["token"]
        same = w.ok("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                              "tool": "send", "input": {"to": "t"},
                                              "key": "x"})
        assert (same["id"], same["created"], same["claimed"]) == (x["id"], False, False)
        assert "token" not in same
        e = w.err("executeToolIdempotent", {"goal_id": g["id"], "token": s["token"],
                                            "tool": "send", "input": {}, "key": "y"})
        assert e["code"] == LEASE_LOST
        e = w.err("executeToolIdempotent", {"goal_id": s["id"], "token": s["token"],
                                            "tool": "send", "input": {}})
        assert e["code"] == INVALID_PARAMS

        # resumeSession: refused while held (naming the holder); after a requeue it
        # is claimed again with its checkpoint.
        e = w.err("resumeSession", {"session_id": s["id"], "worker_id": "a2"})
        assert e["code"] == CONFLICT and e["data"]["worker_id"] == "a1"
        w.ok("checkpoint", {"item_id": s["id"], "token": s["token"], "data": {"at": 7}})
        w.ok("releaseTask", {"item_id": s["id"], "token": s["token"], "outcome": "requeue"})
        r = w.ok("resumeSession", {"session_id": s["id"], "worker_id": "a2", "ttl": 30})
        assert (r["id"], r["worker_id"], r["attempt"], r["checkpoint"]) == \
            (s["id"], "a2", 2, {"at": 7})
        assert r["token"] != s["token"]
        e = w.err("resumeSession", {"session_id": g["id"], "worker_id": "a2"})
        assert e["code"] == INVALID_PARAMS
        e = w.err("createGoal", {"session_id": s["id"], "token": s["token"]})
        assert e["code"] == LEASE_LOST  # the requeue ended that claim
        valid = w.ok("verify", {"item_id": s["id"], "token": s["token"]})
        assert valid["valid"] is False
    finally:
        w.close()


# --- 7. the README example, run as written ----------------------------------------------


def example_env(db: Path, home: Path, slow: str | None = None) -> dict:
    env = {**os.environ, "ORCH_DB": str(db), "OPENCLAW_HOME": str(home)}
    env.pop("ORCH_SOCKET", None)
    env.pop("EXAMPLE_SLOW", None)
    if slow is not None:
        env["EXAMPLE_SLOW"] = slow
    return env


def run_example(db: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=60, env=example_env(db, home), cwd=ROOT, check=False)


def test_readme_example_runs_then_has_nothing_to_do(tmp_path):
    db, home = tmp_path / "ex" / "orch.db", tmp_path / "exhome"
    first = run_example(db, home)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert re.fullmatch(r"session \d+ attempt 1 checkpoint None", lines[0]), lines
    assert lines[-1] == "sent"
    sid = int(lines[0].split()[1])

    second = run_example(db, home)
    assert second.returncode != 0
    assert "sent" not in second.stdout
    assert f"session {sid} is succeeded already" in second.stderr, second.stderr
    with Orchestrator(db) as o:
        (call,) = o.list_tasks(kind="tool_execution", limit=0)
        assert call["status"] == "succeeded" and call["result"]["sent_to"] == "team@example.org"
        assert types_of(o, call["id"]).count("claimed") == 1
        assert o.get_task(sid)["checkpoint"] == {"report": "done"}


@pytest.mark.slow
def test_readme_example_survives_kill_9_without_sending_twice(tmp_path):
    db, home = tmp_path / "ex" / "orch.db", tmp_path / "exhome"
    with open(tmp_path / "example.err", "w") as err:
        p = subprocess.Popen([sys.executable, str(EXAMPLE)], stdout=subprocess.PIPE,
                             stderr=err, text=True, env=example_env(db, home, "30"), cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert re.fullmatch(r"session \d+ attempt 1 checkpoint None\n", line), (
            line, (tmp_path / "example.err").read_text())
        sid = int(line.split()[1])
        call = None
        deadline = time.monotonic() + 20
        with Orchestrator(db) as o:
            while time.monotonic() < deadline:
                calls = o.list_tasks(kind="tool_execution", limit=0)
                if calls and calls[0]["status"] == "running":
                    call = calls[0]
                    break
                time.sleep(0.05)
        assert call is not None, "the tool execution never appeared"
        kill9(p)  # mid-send: the side effect may or may not have happened
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        close_pipes(p)

    t0 = time.monotonic()
    again = run_example(db, home)
    took = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    out = again.stdout.splitlines()
    assert out[0] == f"session {sid} attempt 2 checkpoint None", out
    assert out[-1] == f"tool call {call['id']} is unknown result None", out
    assert "sent" not in out
    assert "waiting:" in again.stderr and "report-agent" in again.stderr  # the live lease
    assert took < 15

    with Orchestrator(db) as o:
        row = o.get_task(call["id"])
        assert (row["status"], row["attempts"], row["result"]) == ("unknown", 1, None)
        assert types_of(o, call["id"]).count("claimed") == 1
        expired = [e for e in events_of(o, call["id"]) if e["type"] == "expired"]
        assert [e["detail"]["status"] for e in expired] == ["unknown"]
        session = o.get_task(sid)
        assert (session["status"], session["attempts"]) == ("succeeded", 2)
        assert session["checkpoint"] == {"report": "done"}
        assert "taken_over" in types_of(o, sid)
        report = o.doctor()
        assert report["ok"], report["problems"]
