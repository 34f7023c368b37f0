"""``api.hold(claim)``, the Lease helper, embedded and through the daemon: it heartbeats a
short lease alive, notices a lost lease (a refused heartbeat, or its own deadline after
a pause), releases succeeded or failed as the block ends, and sees a cancel request."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import db_rows, events_of, sleep_past, spawn, types_of

from orchestrator import Conflict, LeaseLost, Orchestrator
from orchestrator.clock import now_ms


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
        sleep_past(c["lease_expires_at"])
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
    p = spawn("paused_holder.py", str(db_path), "1", "3600", log=tmp_path / "holder.err",
              stdin=True)
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
