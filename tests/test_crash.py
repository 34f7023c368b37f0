"""kill -9: a holder that dies loses its lease, is fenced out for good, and the file
survives a writer killed mid-burst (SPEC sections 4 and 5)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from conftest import orch_process

from orchestrator import LeaseLost, Orchestrator

HELPERS = Path(__file__).resolve().parent / "helpers"

pytestmark = pytest.mark.slow


def now_ms() -> int:
    return int(time.time() * 1000)


def spawn(script: str, *args: str, log: Path) -> subprocess.Popen:
    err = open(log, "w")  # noqa: SIM115 -- the child process writes it; closed after
    try:
        return subprocess.Popen([sys.executable, str(HELPERS / script), *args],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        err.close()


def kill9(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(timeout=10) == -signal.SIGKILL
    p.stdout.close()


def integrity(db: Path) -> list:
    conn = apsw.Connection(str(db))
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


@pytest.fixture
def dead_holder(db_path, tmp_path):
    """An idempotent and an unsafe item claimed (ttl 1 s) by a process that was SIGKILLed;
    returns (safe_id, unsafe_id, {item_id: claim}) once both leases have expired."""
    with Orchestrator(db_path) as o:
        safe = o.submit_task({"job": "safe"})["id"]
        unsafe = o.submit_task({"job": "unsafe"}, effect="unsafe")["id"]
    p = spawn("crash_holder.py", str(db_path), "1", str(safe), str(unsafe),
              log=tmp_path / "holder.err")
    try:
        line = p.stdout.readline()
        assert line, (tmp_path / "holder.err").read_text()
        claims = {c["id"]: c for c in json.loads(line)}
    finally:
        kill9(p)
    assert set(claims) == {safe, unsafe}
    for c in claims.values():
        assert c["worker_id"] == "doomed" and c["token"] and c["fence"] > 0
        assert c["lease_expires_at"] <= now_ms() + 1100  # a 1 s lease
    # Wait until both leases are over.
    end = max(c["lease_expires_at"] for c in claims.values())
    time.sleep(max(0, end - now_ms()) / 1000 + 0.1)
    assert now_ms() > end
    return safe, unsafe, claims


def test_killed_holder_is_recovered_and_fenced_out(db_path, dead_holder):
    safe, unsafe, claims = dead_holder
    old_fences = {i: c["fence"] for i, c in claims.items()}
    with Orchestrator(db_path) as o:
        # Expired but not yet recovered: still "running", yet the token is dead already
        # and an expired lease cannot be revived by a heartbeat.
        for item_id, c in claims.items():
            assert o.get_task(item_id)["status"] == "running"
            assert o.verify(item_id, c["token"])["valid"] is False
            with pytest.raises(LeaseLost):
                o.heartbeat(item_id, c["token"], ttl=60)
        assert {x["id"] for x in o.status()["expired_leases"]} == {safe, unsafe}
        assert all(o.get_task(i)["lease_expires_at"] == c["lease_expires_at"]
                   for i, c in claims.items())

        # Recovery: idempotent -> pending, unsafe -> unknown.
        r = o.stale_recovery()
        got = {x["id"]: x for x in r["recovered"]}
        assert set(got) == {safe, unsafe} and r["count"] == 2
        assert got[safe]["status"] == "pending" and got[unsafe]["status"] == "unknown"
        assert got[safe]["worker_id"] == "doomed" and got[safe]["fence"] == old_fences[safe]
        assert o.get_task(safe)["status"] == "pending"
        assert o.get_task(unsafe)["status"] == "unknown"
        expired = [e for e in o.list_events(limit=0) if e["type"] == "expired"]
        assert sorted(e["item_id"] for e in expired) == sorted([safe, unsafe])

        # Running it again does nothing.
        n_events = len(o.list_events(limit=0))
        r2 = o.stale_recovery()
        assert r2["count"] == 0 and r2["recovered"] == []
        assert len(o.list_events(limit=0)) == n_events

        # The dead holder's token is rejected everywhere and changes nothing.
        before = {i: o.get_task(i) for i in claims}
        for item_id, c in claims.items():
            tok = c["token"]
            with pytest.raises(LeaseLost):
                o.heartbeat(item_id, tok)
            with pytest.raises(LeaseLost):
                o.release_task(item_id, tok, "succeeded", result={"late": True})
            with pytest.raises(LeaseLost):
                o.checkpoint(item_id, tok, {"late": True})
            v = o.verify(item_id, tok)
            assert v["valid"] is False and v["status"] == before[item_id]["status"]
        assert {i: o.get_task(i) for i in claims} == before
        assert len(o.list_events(limit=0)) == n_events

    # ... and through the CLI, in another process: exit 4.
    for item_id, c in claims.items():
        tok = c["token"]
        for args in (["heartbeat", str(item_id), "--token", tok],
                     ["release", str(item_id), "--token", tok, "--outcome", "succeeded"],
                     ["checkpoint", str(item_id), "--token", tok, "--data", "{}"],
                     ["verify", str(item_id), "--token", tok]):
            p = orch_process(*args, db=db_path)
            assert p.returncode == 4, (args, p.returncode, p.stdout, p.stderr)
            if args[0] != "verify":
                assert p.stderr.startswith("orch: error: ") and \
                    len(p.stderr.strip().splitlines()) == 1, p.stderr

    with Orchestrator(db_path) as o:
        assert {i: o.get_task(i) for i in claims} == before
        assert len(o.list_events(limit=0)) == n_events
        # A new holder gets a strictly larger fence, and the last checkpoint.
        c2 = o.claim_task("phoenix", ttl=30, item_id=safe)
        assert c2["fence"] > max(old_fences.values())
        assert c2["attempt"] == 2
        assert c2["checkpoint"] == {"step": 3, "item": safe}
        assert o.verify(safe, c2["token"])["valid"] is True
        with pytest.raises(LeaseLost):  # the old token stays dead under the new claim
            o.heartbeat(safe, claims[safe]["token"])
        # The unsafe item is never handed out again by a plain claim.
        assert o.claim_task("phoenix", ttl=30) is None
        assert o.get_task(unsafe)["status"] == "unknown"
        o.release_task(safe, c2["token"], "succeeded")
        fence_after = c2["fence"]
        new_item = o.submit_task({"after": "reopen"})["id"]
        report = o.doctor()
        assert report["ok"], report["problems"]

    # Closed and reopened, by a new Orchestrator and by a new process: fences go on up.
    with Orchestrator(db_path) as o:
        o.resolve_task(unsafe, "retry")
        c3 = o.claim_task("reopened", ttl=30, item_id=unsafe)
        assert c3["fence"] > fence_after
        o.release_task(unsafe, c3["token"], "succeeded")
    p = orch_process("claim", "--worker", "other-process", "--ttl", "30", db=db_path)
    assert p.returncode == 0, p.stderr
    c4 = json.loads(p.stdout)
    assert c4["id"] == new_item and c4["fence"] > c3["fence"]
    with Orchestrator(db_path) as o:
        report = o.doctor()
        assert report["ok"], report["problems"]


def test_killed_holder_is_taken_over_before_recovery(db_path, dead_holder):
    safe, _unsafe, claims = dead_holder
    old = claims[safe]
    with Orchestrator(db_path) as o:
        c = o.claim_task("successor", ttl=30, item_id=safe)
        assert c["fence"] > max(x["fence"] for x in claims.values())
        assert c["worker_id"] == "successor" and c["checkpoint"] == {"step": 3, "item": safe}
        with pytest.raises(LeaseLost):
            o.release_task(safe, old["token"], "succeeded")
        assert o.verify(safe, old["token"])["valid"] is False
        assert o.verify(safe, c["token"])["valid"] is True
        taken = [e for e in o.list_events(item_id=safe) if e["type"] == "taken_over"]
        assert len(taken) == 1
        # Recovery later leaves the new holder alone.
        r = o.stale_recovery()
        assert safe not in {x["id"] for x in r["recovered"]}
        assert o.get_task(safe)["worker_id"] == "successor"
        o.release_task(safe, c["token"], "succeeded")
        report = o.doctor()
        assert report["ok"], report["problems"]


def test_kill_minus_nine_mid_burst_leaves_a_sound_file(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        o.submit_task({"seed": True})
    rng = random.Random(os.getpid())
    survived_at_least = 0
    max_fence_seen = 0
    for round_ in range(4):
        writers = [spawn("burst_writer.py", str(db_path), f"burst{round_}x{k}",
                         log=tmp_path / f"burst-{round_}-{k}.err") for k in range(2)]
        counts = [0, 0]
        try:
            # Let them get going, then kill each at an arbitrary point of its loop.
            for k, w in enumerate(writers):
                for _ in range(30 + rng.randrange(40)):
                    line = w.stdout.readline()
                    assert line, (tmp_path / f"burst-{round_}-{k}.err").read_text()
                    counts[k] = int(line)
            time.sleep(rng.random() * 0.2)
        finally:
            for w in writers:
                kill9(w)
        survived_at_least += sum(counts)

        # The file opens (recovering the WAL), and is sound.
        assert integrity(db_path) == [("ok",)]
        with Orchestrator(db_path) as o:
            report = o.doctor()
            assert report["ok"], report["problems"]
            # Every release a writer reported as done is still there.
            assert o.status()["counts"]["succeeded"] >= survived_at_least
            fence = o.status()["fence"]
            assert fence > max_fence_seen
            max_fence_seen = fence

    # After the crashes, claims still get fresh, larger fences.
    with Orchestrator(db_path) as o:
        items = o.list_tasks(limit=0)
        assert max(i["fence"] or 0 for i in items) <= max_fence_seen
        c = o.claim_task("after-crash", ttl=30)
        assert c is not None and c["fence"] > max_fence_seen
    assert integrity(db_path) == [("ok",)]
    p = orch_process("doctor", db=db_path)
    assert p.returncode == 0, p.stdout + p.stderr
