"""The ``orch`` command line (SPEC section 7 and 10), run in-process unless stdin matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import apsw
import click
import pytest
from conftest import ROOT, CliResult, db_rows, one_error_line
from freezegun import freeze_time

from orchestrator import InvalidInput, Orchestrator
from orchestrator.cli import cli as cli_group
from orchestrator.cli import run
from orchestrator.rules import hash_token
from orchestrator.store import SCHEMA_VERSION
from orchestrator.validate import KINDS, SUBMIT_KINDS

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


@pytest.fixture
def raw(capsys):
    """Run ``orch`` in-process with exactly these arguments (no --db added)."""
    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(list(args))
        got = capsys.readouterr()
        return CliResult(code, got.out, got.err)
    return invoke


@pytest.fixture
def clock():
    with freeze_time(T0) as frozen:
        yield frozen


def ok(r) -> None:
    assert r.code == 0, r
    assert r.err == "", r


def submit(cli, *args: str) -> int:
    r = cli("submit", "--json", *args)
    ok(r)
    return r.json["id"]


def claim(cli, *args: str) -> dict:
    r = cli("claim", "--worker", "w1", *args)
    ok(r)
    return r.json


# --- init, submit, claim --------------------------------------------------------------------


def test_init(cli, db_path):
    assert not db_path.exists()
    r = cli("init")
    ok(r)
    assert str(db_path) in r.out and f"schema {SCHEMA_VERSION}" in r.out
    assert db_path.exists()
    r = cli("init", "--json")
    ok(r)
    assert r.json == {"db": str(db_path), "schema_version": SCHEMA_VERSION}


def test_submit_text_and_json(cli):
    r = cli("submit", "--payload", '{"url": "https://example.org"}')
    ok(r)
    assert r.out.strip() == "submitted: item 1 (task, queue default, pending)"
    r = cli("submit", "--json", "--queue", "crawl", "--payload", '[1, 2]', "--priority", "7",
            "--key", "page-1", "--max-attempts", "5", "--effect", "unsafe")
    ok(r)
    item = r.json
    assert item["created"] is True and item["id"] == 2
    assert item["queue"] == "crawl" and item["payload"] == [1, 2]
    assert item["priority"] == 7 and item["key"] == "page-1"
    assert item["max_attempts"] == 5 and item["effect"] == "unsafe"
    assert item["kind"] == "task" and item["status"] == "pending"
    r = cli("submit", "--queue", "crawl", "--key", "page-1", "--payload", "3")
    ok(r)
    assert r.out.strip() == "exists: item 2 (task, queue crawl, pending)"
    r = cli("submit", "--json", "--queue", "crawl", "--key", "page-1")
    assert r.json["created"] is False and r.json["payload"] == [1, 2]


def test_submit_delay_kind_parent(cli, clock):
    r = cli("submit", "--json", "--delay", "2.5")
    ok(r)
    assert r.json["run_after"] == T0_MS + 2500
    session = cli("submit", "--json", "--kind", "session")
    ok(session)
    assert session.json["kind"] == "session"
    assert session.json["max_attempts"] == 0  # sessions: no attempt limit
    child = cli("submit", "--json", "--parent", str(session.json["id"]), "--max-attempts", "1")
    ok(child)
    assert child.json["parent_id"] == session.json["id"] and child.json["kind"] == "task"
    assert child.json["max_attempts"] == 1 and child.json["effect"] == "idempotent"
    one_error_line(cli("submit", "--parent", "999"), 5)


def test_submit_payload_file(cli, tmp_path):
    f = tmp_path / "payload.json"
    f.write_text('{"from": "file", "n": [1, 2, 3]}')
    r = cli("submit", "--json", "--payload-file", str(f))
    ok(r)
    assert r.json["payload"] == {"from": "file", "n": [1, 2, 3]}
    r = cli("submit", "--payload", "1", "--payload-file", str(f))
    one_error_line(r, 2)


def test_submit_payload_from_stdin(orch_cli, db_path):
    p = orch_cli("submit", "--json", "--payload-file", "-", input='{"from": "stdin"}\n')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["payload"] == {"from": "stdin"}
    with Orchestrator(db_path) as o:
        assert o.get_task(1)["payload"] == {"from": "stdin"}
    p = orch_cli("submit", "--payload-file", "-", input="{not json")
    assert p.returncode == 2
    assert p.stderr.startswith("orch: error: payload") and p.stderr.count("\n") == 1


def test_claim_prints_json_always(cli, clock):
    iid = submit(cli, "--queue", "q", "--payload", '{"a": 1}')
    r = cli("claim", "--worker", "w1", "--queue", "q", "--ttl", "60")
    ok(r)
    c = r.json  # JSON without --json
    assert c["id"] == iid and c["status"] == "running" and c["worker_id"] == "w1"
    # a claim's fence is the sequence number of its 'claimed' event (after 'submitted')
    assert c["attempt"] == 1 and c["fence"] == 2 and c["payload"] == {"a": 1}
    assert c["lease_expires_at"] == T0_MS + 60_000
    assert isinstance(c["token"], str) and c["token"]


def test_claim_nothing_exits_3(cli):
    cli("init")
    r = cli("claim", "--worker", "w1")
    assert r.code == 3 and r.out == ""
    assert "nothing to claim" in r.err
    r = cli("claim", "--worker", "w1", "--wait", "0.2")
    assert r.code == 3


def test_claim_queues_kinds_and_item(cli, clock):
    a = submit(cli, "--queue", "a")
    b = submit(cli, "--queue", "b", "--priority", "3")
    s = submit(cli, "--kind", "session", "--priority", "9")
    later = submit(cli, "--delay", "60")
    assert claim(cli, "--queue", "a", "--queue", "b")["id"] == b
    assert claim(cli, "--queue", "a", "--queue", "b")["id"] == a
    assert claim(cli, "--kind", "session")["id"] == s
    assert cli("claim", "--worker", "w1").code == 3  # `later` is delayed
    assert claim(cli, "--item", str(later))["id"] == later  # --item ignores run_after
    r = cli("claim", "--worker", "w2", "--item", str(later))
    err = one_error_line(r, 6)
    assert "w1" in err  # names the holder
    one_error_line(cli("claim", "--worker", "w2", "--item", "999"), 5)


def test_claim_item_takes_over_expired_lease(cli, clock):
    iid = submit(cli)
    old = claim(cli, "--ttl", "5")
    clock.tick(6)
    r = cli("claim", "--worker", "w2", "--item", str(iid))
    ok(r)
    assert r.json["fence"] > old["fence"] and r.json["worker_id"] == "w2"
    one_error_line(cli("heartbeat", str(iid), "--token", old["token"]), 4)
    types = [e["type"] for e in cli("events", "--json", "--item", str(iid)).json]
    assert types == ["submitted", "claimed", "taken_over", "claimed"]


# --- heartbeat, release, checkpoint, verify -----------------------------------------------


def test_heartbeat_one_lease_and_several(cli, clock):
    a = submit(cli)
    b = submit(cli)
    c = submit(cli)
    ca = claim(cli, "--ttl", "10")
    cb = claim(cli, "--ttl", "20")
    cc = claim(cli, "--ttl", "1")
    clock.tick(3)  # c's lease has ended
    r = cli("heartbeat", str(a), "--token", ca["token"])
    ok(r)
    assert r.out.startswith(f"item {a}: lease until ")
    r = cli("heartbeat", str(a), "--token", ca["token"], "--ttl", "4", "--json")
    ok(r)
    assert r.json == {"id": a, "fence": ca["fence"], "lease_expires_at": T0_MS + 7000,
                      "cancel_requested": False}
    # several: without --ttl each lease gets its claim's ttl again
    r = cli("heartbeat", "--lease", f"{a}={ca['token']}", "--lease", f"{b}={cb['token']}",
            "--json")
    ok(r)
    assert r.json == {"leases": [
        {"id": a, "fence": ca["fence"], "lease_expires_at": T0_MS + 13_000,
         "cancel_requested": False},
        {"id": b, "fence": cb["fence"], "lease_expires_at": T0_MS + 23_000,
         "cancel_requested": False}]}
    # one expired among them: refused alone, the others extended, exit 4
    r = cli("heartbeat", "--lease", f"{a}={ca['token']}", "--lease", f"{c}={cc['token']}",
            "--lease", f"{b}={cb['token']}", "--ttl", "100")
    assert r.code == 4, r
    lines = r.out.splitlines()
    assert lines[0].startswith(f"item {a}: lease until ")
    assert lines[1].startswith(f"item {c}: refused: item {c}: the lease expired at ")
    assert lines[2].startswith(f"item {b}: lease until ")
    assert r.err == f"orch: error: 1 of 3 lease(s) refused: item {c}\n"
    leases = {i["id"]: i["lease_expires_at"] for i in cli("ls", "--json").json}
    assert leases == {a: T0_MS + 103_000, b: T0_MS + 103_000, c: T0_MS + 1000}
    # the token is never echoed in an error about a --lease argument
    for bad in ("nope", f"{a}", f"{a}=", f"x={ca['token']}"):
        err = one_error_line(cli("heartbeat", "--lease", bad), 2)
        assert "#1: expected ID=TOKEN or ID=@FILE" in err and ca["token"] not in err


def test_heartbeat_usage_errors(cli):
    a = submit(cli)
    ca = claim(cli)
    one_error_line(cli("heartbeat"), 2)
    err = one_error_line(cli("heartbeat", str(a)), 2)
    assert "--token T, --token-file FILE|- or the environment variable ORCH_TOKEN" in err
    one_error_line(cli("heartbeat", str(a), "--lease", f"{a}={ca['token']}"), 2)
    one_error_line(cli("heartbeat", "--token", ca["token"], "--lease", f"{a}={ca['token']}"), 2)
    one_error_line(cli("heartbeat", "--lease", f"{a}={ca['token']}",
                       "--lease", f"{a}={ca['token']}"), 2)  # one item twice
    one_error_line(cli("heartbeat", "--lease", f"0={ca['token']}"), 2)
    one_error_line(cli("heartbeat", str(a), "--token", "nope"), 4)
    one_error_line(cli("heartbeat", "987", "--token", "nope"), 5)
    # by worker name: refused, saying why
    err = one_error_line(cli("heartbeat", "--worker", "w1"), 2)
    assert "no longer accepted" in err and "reusing its name" in err


def test_heartbeat_shows_cancel_requested(cli):
    a = submit(cli)
    c = claim(cli)
    r = cli("cancel", str(a))
    ok(r)
    assert "cancel requested" in r.out
    r = cli("heartbeat", str(a), "--token", c["token"])
    ok(r)
    assert "cancel requested" in r.out
    r = cli("heartbeat", str(a), "--token", c["token"], "--json")
    assert r.json["cancel_requested"] is True
    r = cli("release", str(a), "--token", c["token"], "--outcome", "failed", "--json")
    ok(r)
    assert r.json["status"] == "cancelled"


def test_release_outcomes(cli, clock):
    a, b, c, d, e = (submit(cli) for _ in range(5))
    ca, cb, cc, cd, ce = (claim(cli) for _ in range(5))
    assert [x["id"] for x in (ca, cb, cc, cd, ce)] == [a, b, c, d, e]
    r = cli("release", str(a), "--token", ca["token"], "--outcome", "succeeded",
            "--result", '{"pages": 3}')
    ok(r)
    assert r.out.strip() == f"item {a}: succeeded"
    assert cli("show", str(a), "--json").json["result"] == {"pages": 3}
    r = cli("release", str(b), "--token", cb["token"], "--outcome", "failed",
            "--error", "boom", "--retry-in", "12.5", "--json")
    ok(r)
    assert r.json["status"] == "pending" and r.json["error"] == "boom"
    assert r.json["run_after"] == T0_MS + 12_500
    r = cli("release", str(c), "--token", cc["token"], "--outcome", "failed")
    ok(r)
    assert r.out.startswith(f"item {c}: pending, claimable ")
    r = cli("release", str(d), "--token", cd["token"], "--outcome", "failed", "--no-retry",
            "--json")
    assert r.json["status"] == "failed"
    r = cli("release", str(e), "--token", ce["token"], "--outcome", "requeue", "--json")
    assert r.json["status"] == "pending" and r.json["run_after"] == T0_MS
    # released: the token is spent
    one_error_line(cli("release", str(a), "--token", ca["token"], "--outcome", "succeeded"), 4)
    one_error_line(cli("release", str(a), "--token", ca["token"], "--outcome", "maybe"), 2)


def test_checkpoint_and_verify(cli, clock):
    a = submit(cli)
    c = claim(cli, "--ttl", "10")
    r = cli("checkpoint", str(a), "--token", c["token"], "--data", '{"page": 7}')
    ok(r)
    assert r.out.strip() == f"item {a}: checkpoint saved"
    r = cli("checkpoint", str(a), "--token", c["token"], "--data", '{"page": 8}', "--json")
    assert r.json["fence"] == c["fence"] and r.json["checkpoint"] == {"page": 8}
    assert cli("show", str(a), "--json").json["checkpoint"] == {"page": 8}
    one_error_line(cli("checkpoint", str(a), "--token", "bad", "--data", "1"), 4)

    r = cli("verify", str(a), "--token", c["token"])
    ok(r)
    assert r.out.strip() == f"valid: item {a} is running, fence {c['fence']}"
    r = cli("verify", str(a), "--token", c["token"], "--json")
    assert r.code == 0 and r.json == {"valid": True, "fence": c["fence"], "status": "running"}
    r = cli("verify", str(a), "--token", "bad")
    assert r.code == 4 and r.out.startswith("not valid")
    clock.tick(10)
    r = cli("verify", str(a), "--token", c["token"], "--json")
    assert r.code == 4 and r.json["valid"] is False
    one_error_line(cli("verify", "999", "--token", "x"), 5)


# --- tokens kept off the command line ----------------------------------------------------------


def lease_rows(db: Path) -> dict[int, tuple]:
    return {r[0]: r for r in db_rows(db, "SELECT * FROM items ORDER BY id")}


def test_heartbeat_several_leases_one_stale_exits_4(orch_cli, orch, db_path, tmp_path):
    ids = [orch.submit_task(i)["id"] for i in range(3)]
    a, b, old = (orch.claim_task("w1", ttl=30) for _ in ids)
    orch.release_task(old["id"], old["token"], "requeue")
    new = orch.claim_task("w2", ttl=30, item_id=old["id"])  # old's token is stale now
    (tmp_path / "b.token").write_text(b["token"] + "\n")
    before = lease_rows(db_path)
    p = orch_cli("heartbeat", "--lease", f"{a['id']}={a['token']}",
                 "--lease", f"{old['id']}={old['token']}",
                 "--lease", f"{b['id']}=@{tmp_path / 'b.token'}", "--ttl", "100")
    assert p.returncode == 4, p
    assert [line.split(":")[0] for line in p.stdout.splitlines()] == \
        [f"item {i}" for i in (a["id"], old["id"], b["id"])]
    assert "refused" in p.stdout.splitlines()[1]
    assert p.stderr == f"orch: error: 1 of 3 lease(s) refused: item {old['id']}\n"
    assert lease_rows(db_path)[old["id"]] == before[old["id"]]  # the stale one: unchanged
    expires = dict(db_rows(db_path, "SELECT id, lease_expires_at FROM items"))
    for c in (a, b):  # the live ones: 100 s from now, which their claim's 30 s never gave
        assert expires[c["id"]] > c["lease_expires_at"] + 60_000
    assert [t for (t,) in db_rows(db_path, "SELECT type FROM event_log WHERE item_id = ? "
                                           "ORDER BY seq", (old["id"],))][-1] == "claimed"
    assert orch.verify(old["id"], new["token"])["valid"]
    p = orch_cli("heartbeat", "--lease", f"{a['id']}={a['token']}", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["leases"][0]["id"] == a["id"]


def test_token_from_the_environment_a_file_or_stdin(cli, orch, db_path, tmp_path, monkeypatch):
    orch.submit_task(1)
    c = orch.claim_task("w1", ttl=30)
    iid = str(c["id"])
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(f"  {c['token']}  \nnot this line\n")  # the first line, stripped
    bad.write_text("stale\n")
    monkeypatch.setenv("ORCH_TOKEN", c["token"])
    ok(cli("heartbeat", iid))
    ok(cli("checkpoint", iid, "--data", '{"n": 1}'))
    ok(cli("verify", iid))
    # --token, then --token-file, then ORCH_TOKEN
    one_error_line(cli("heartbeat", iid, "--token", "stale"), 4)
    one_error_line(cli("checkpoint", iid, "--token-file", str(bad), "--data", "2"), 4)
    monkeypatch.setenv("ORCH_TOKEN", "stale")
    one_error_line(cli("heartbeat", iid), 4)
    ok(cli("heartbeat", iid, "--token", c["token"]))
    ok(cli("checkpoint", iid, "--token-file", str(good), "--data", '{"n": 2}'))
    one_error_line(cli("heartbeat", iid, "--token", c["token"], "--token-file", str(good)), 2)
    monkeypatch.delenv("ORCH_TOKEN")
    err = one_error_line(cli("release", iid, "--outcome", "succeeded"), 2)
    assert "--token T, --token-file FILE|- or the environment variable ORCH_TOKEN" in err
    assert orch.get_task(c["id"])["checkpoint"] == {"n": 2}
    assert orch.get_task(c["id"])["status"] == "running"


def test_token_from_stdin_and_the_environment_in_a_real_process(orch_cli, orch):
    orch.submit_task(1)
    c = orch.claim_task("w1", ttl=30)
    iid = str(c["id"])
    p = orch_cli("heartbeat", iid, "--token-file", "-", input=c["token"] + "\n")
    assert p.returncode == 0 and p.stdout.startswith(f"item {iid}: lease until"), p
    p = orch_cli("checkpoint", iid, "--data", "3", env={"ORCH_TOKEN": c["token"]})
    assert p.returncode == 0, p
    p = orch_cli("release", iid, "--outcome", "succeeded", "--token-file", "-",
                 input=c["token"] + "\n")
    assert p.returncode == 0 and p.stdout.strip() == f"item {iid}: succeeded", p
    assert orch.get_task(c["id"])["checkpoint"] == 3


WRAPPER = """#!/bin/sh
# orch, recording each command line as ps shows it, and every claim it hands out
printf '%s\\n' "$*" >> "$LOG_DIR/argv"
if [ "$1" = claim ]; then
  out=$("$PYTHON" -m orchestrator "$@"); rc=$?
  [ -n "$out" ] && printf '%s\\n' "$out" | tee -a "$LOG_DIR/claims"
  exit $rc
fi
exec "$PYTHON" -m orchestrator "$@"
"""


def test_worker_sh_runs_and_keeps_tokens_off_the_command_line(orch, db_path, tmp_path):
    good = orch.submit_task("good", queue="sh")["id"]
    bad = orch.submit_task("bad", queue="sh", max_attempts=1)["id"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "orch").write_text(WRAPPER)
    (bin_dir / "orch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ORCH_DB": str(db_path),
           "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "LOG_DIR": str(tmp_path)}
    worker = subprocess.Popen(["sh", str(ROOT / "scripts" / "worker.sh"), "sh",
                               "sh", "-c", "grep -q good || { echo 'no good' >&2; exit 1; }"],
                              env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def statuses() -> list:
            return db_rows(db_path, "SELECT status FROM items WHERE id IN (?, ?) ORDER BY id",
                           (good, bad))
        deadline = time.monotonic() + 30
        while statuses() != [("succeeded",), ("dead",)] and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stderr.read()
            time.sleep(0.1)
        assert statuses() == [("succeeded",), ("dead",)]
        # The failing command's stderr tail is the item's error; a success has none.
        assert db_rows(db_path, "SELECT error FROM items WHERE id IN (?, ?) ORDER BY id",
                       (good, bad)) == [(None,), ("no good",)]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # it waits for more work: stop it
        worker.wait(10)
        worker.stderr.close()
    tokens = [json.loads(line)["token"] for line in (tmp_path / "claims").read_text().splitlines()]
    assert len(tokens) == 2
    argv = (tmp_path / "argv").read_text()
    assert argv.count("release ") == 2
    assert "--token" not in argv and not any(t in argv for t in tokens)


# --- recover, cancel, resolve -------------------------------------------------------------------


def test_recover_and_resolve(cli, clock):
    idem = submit(cli)
    unsafe = submit(cli, "--effect", "unsafe")
    c1 = claim(cli, "--ttl", "5")
    claim(cli, "--ttl", "5")
    clock.tick(6)
    r = cli("status", "--json")
    assert [x["id"] for x in r.json["expired_leases"]] == [idem, unsafe]
    r = cli("recover", "--dry-run")
    ok(r)
    assert r.out.splitlines()[0] == "would recover 2 item(s)"
    assert "-> pending" in r.out and "-> unknown" in r.out
    r = cli("recover", "--dry-run", "--json")
    assert r.json["dry_run"] is True and r.json["count"] == 2
    assert cli("show", str(idem), "--json").json["status"] == "running"  # untouched
    r = cli("recover", "--json")
    ok(r)
    assert {x["id"]: x["status"] for x in r.json["recovered"]} == {idem: "pending",
                                                                   unsafe: "unknown"}
    r = cli("recover")
    ok(r)
    assert r.out.strip() == "recovered 0 item(s)"
    one_error_line(cli("heartbeat", str(idem), "--token", c1["token"]), 4)

    one_error_line(cli("resolve", str(idem), "--outcome", "succeeded"), 6)
    r = cli("resolve", str(unsafe), "--outcome", "retry")
    ok(r)
    assert r.out.strip() == f"item {unsafe}: pending"
    one_error_line(cli("resolve", str(unsafe), "--outcome", "bogus"), 2)
    one_error_line(cli("resolve", "999", "--outcome", "retry"), 5)


def test_cancel(cli):
    a = submit(cli)
    r = cli("cancel", str(a))
    ok(r)
    assert r.out.strip() == f"item {a}: cancelled"
    err = one_error_line(cli("cancel", str(a)), 6)
    assert "cancelled" in err
    b = submit(cli)
    claim(cli)
    r = cli("cancel", str(b), "--json")
    ok(r)
    assert r.json["status"] == "running" and r.json["cancel_requested"] is True
    one_error_line(cli("cancel", "999"), 5)


# --- reading: status, ls, show, events ------------------------------------------------------


def test_status(cli, clock):
    submit(cli)
    a = submit(cli)
    b = submit(cli)
    cli("claim", "--worker", "alpha", "--ttl", "100")
    cli("claim", "--worker", "beta", "--ttl", "5")
    clock.tick(6)
    r = cli("status")
    ok(r)
    assert "pending 1" in r.out and "running 2" in r.out
    assert "workers (1 live):" in r.out
    alpha = [line for line in r.out.splitlines() if "alpha" in line]
    assert len(alpha) == 1 and alpha[0].rstrip().endswith("1")  # holding item 1
    assert "expired leases not yet recovered: 1" in r.out
    r = cli("status", "--json")
    ok(r)
    st = r.json
    assert st["counts"]["running"] == 2
    assert st["fence"] == max(i["fence"] for i in cli("ls", "--json").json if i["fence"])
    assert [(w["worker_id"], w["holding"]) for w in st["workers"]] == [("alpha", [1])]
    assert [(x["id"], x["worker_id"]) for x in st["expired_leases"]] == [(2, "beta")]
    assert (a, b) == (2, 3)


def test_ls(cli):
    ids = [submit(cli, "--queue", q, "--payload", json.dumps({"n": i}))
           for i, q in enumerate(["a", "b", "a"])]
    s = submit(cli, "--kind", "session")
    claim(cli, "--queue", "a")
    r = cli("ls")
    ok(r)
    lines = r.out.splitlines()
    assert lines[0].split() == ["id", "kind", "queue", "status", "prio", "tries", "worker",
                                "fence", "key", "payload"]
    assert [int(line.split()[0]) for line in lines[1:]] == [s, ids[2], ids[1], ids[0]]
    r = cli("ls", "--json")
    assert [i["id"] for i in r.json] == [s, ids[2], ids[1], ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--queue", "a").json] == [ids[2], ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--status", "running").json] == [ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--kind", "session").json] == [s]
    assert [i["id"] for i in cli("ls", "--json", "--limit", "1").json] == [s]
    assert len(cli("ls", "--json", "--limit", "0").json) == 4
    r = cli("ls", "--status", "dead")
    ok(r)
    assert len(r.out.splitlines()) == 1  # the header only
    one_error_line(cli("ls", "--status", "nope"), 2)


def test_ls_limit_default_100(cli, orch):
    orch.submit_many([{"payload": i} for i in range(102)])
    assert len(cli("ls", "--json").json) == 100
    assert len(cli("ls", "--json", "--limit", "0").json) == 102


def test_show(cli, clock):
    a = submit(cli, "--payload", '{"x": 1}', "--key", "k1")
    r = cli("show", str(a))
    ok(r)
    fields = dict(line.split(None, 1) for line in r.out.splitlines())
    assert fields["id"] == str(a) and fields["status"] == "pending"
    assert fields["key"] == "k1" and fields["payload"] == '{"x":1}'
    assert fields["attempts"] == "0 of 3"
    r = cli("show", str(a), "--json")
    ok(r)
    item = r.json
    for field in ("id", "kind", "queue", "parent_id", "key", "payload", "priority", "status",
                  "attempts", "max_attempts", "run_after", "effect", "checkpoint", "result",
                  "error", "worker_id", "fence", "lease_expires_at"):
        assert field in item, field
    assert item["payload"] == {"x": 1} and item["run_after"] == T0_MS
    one_error_line(cli("show", "999"), 5)


def test_events(cli):
    a = submit(cli)
    b = submit(cli)
    c = claim(cli)
    cli("heartbeat", str(a), "--token", c["token"])
    r = cli("events")
    ok(r)
    lines = r.out.splitlines()
    assert len(lines) == 4
    assert lines[2].split()[:5] == ["3", lines[2].split()[1], "item", str(a), "claimed"]
    assert "w1" in lines[2] and f"fence {c['fence']}" in lines[2]
    r = cli("events", "--json")
    ok(r)
    evs = r.json
    assert [(e["seq"], e["item_id"], e["type"]) for e in evs] == [
        (1, a, "submitted"), (2, b, "submitted"), (3, a, "claimed"), (4, a, "heartbeat")]
    assert [e["seq"] for e in cli("events", "--json", "--since", "2").json] == [3, 4]
    assert [e["seq"] for e in cli("events", "--json", "--item", str(a)).json] == [1, 3, 4]
    assert [e["seq"] for e in cli("events", "--json", "--item", str(a), "--since", "3")
            .json] == [4]
    r = cli("events", "--since", "4")
    ok(r)
    assert r.out == ""
    assert cli("events", "--json", "--item", str(b), "--since", "2").json == []


@pytest.mark.parametrize("extra", [[], ["--json"], ["--since", "5"]])
def test_events_of_an_unknown_item_is_not_found(cli, extra):
    submit(cli)
    assert "item 999 not found" in one_error_line(cli("events", "--item", "999", *extra), 5)


def test_events_follow_of_an_unknown_item_stops_at_once(cli, orch_cli):
    submit(cli)
    p = orch_cli("events", "--item", "999", "--follow", timeout=20)
    assert (p.returncode, p.stdout) == (5, ""), p
    assert p.stderr == "orch: error: item 999 not found\n"


def test_tokens_never_printed(cli, clock):
    a = submit(cli, "--effect", "unsafe")
    b = submit(cli)
    ca = claim(cli, "--ttl", "5")
    cb = claim(cli, "--ttl", "60")
    cli("heartbeat", str(b), "--token", cb["token"])
    cli("checkpoint", str(b), "--token", cb["token"], "--data", '"half"')
    clock.tick(6)
    cli("recover")
    cli("resolve", str(a), "--outcome", "retry")
    ca2 = claim(cli, "--item", str(a))
    secrets = [ca["token"], cb["token"], ca2["token"]]
    secrets += [hash_token(t) for t in secrets]
    outputs = []
    for args in (["show", str(a)], ["show", str(b)], ["ls"], ["events"],
                 ["events", "--item", str(b)], ["status"]):
        for extra in ([], ["--json"]):
            r = cli(*args, *extra)
            ok(r)
            outputs.append(r.out)
            if extra:
                doc = json.dumps(r.json)
                assert '"token' not in doc, args
    assert all(s not in out for s in secrets for out in outputs)
    # fences are printed
    assert str(cb["fence"]) in cli("show", str(b)).out


# --- doctor, backup -------------------------------------------------------------------------


def test_doctor(cli, db_path):
    a = submit(cli)
    claim(cli)
    r = cli("doctor")
    ok(r)
    assert r.out.startswith("ok: 1 items, 2 events")
    r = cli("doctor", "--json")
    assert r.code == 0 and r.json["ok"] is True and r.json["problems"] == []
    # tamper with a row behind orch's back: doctor must notice and exit 1
    conn = apsw.Connection(str(db_path))
    conn.execute("UPDATE items SET priority = 99 WHERE id = ?", (a,))
    conn.close()
    r = cli("doctor")
    assert r.code == 1
    assert "problem" in r.out and "priority" in r.out
    r = cli("doctor", "--json")
    assert r.code == 1 and r.json["ok"] is False
    assert any("priority" in p for p in r.json["problems"])


def test_backup(cli, tmp_path):
    submit(cli, "--payload", '"keep me"')
    dest = tmp_path / "copy.db"
    r = cli("backup", str(dest))
    ok(r)
    assert str(dest) in r.out
    with Orchestrator(dest) as copy:
        assert [i["payload"] for i in copy.list_tasks()] == ["keep me"]
        assert copy.doctor()["ok"]
    one_error_line(cli("backup", str(dest)), 2)  # never overwrites
    dest2 = tmp_path / "copy2.db"
    r = cli("backup", str(dest2), "--json")
    ok(r)
    assert r.json == {"backup": str(dest2)}


# --- global options, help, errors ---------------------------------------------------------


def test_db_and_json_before_or_after_the_command(raw, tmp_path):
    first = tmp_path / "one.db"
    second = tmp_path / "two.db"
    r = raw("--db", str(first), "--json", "submit", "--payload", "1")
    ok(r)
    assert r.json["id"] == 1
    r = raw("submit", "--payload", "2", "--db", str(second), "--json")
    ok(r)
    assert r.json["id"] == 1 and second.exists()
    r = raw("submit", "--db", str(first), "--payload", "3")
    ok(r)
    assert r.out.startswith("submitted: item 2")  # text without --json
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.out)
    r = raw("ls", "--json", "--db", str(first))
    assert [i["payload"] for i in r.json] == [3, 1]
    r = raw("--json", "ls", "--db", str(second))
    assert [i["payload"] for i in r.json] == [2]
    r = raw("--db", str(second), "ls", "--db", str(first), "--json")
    assert [i["payload"] for i in r.json] == [3, 1]  # the nearer --db wins
    # the default database was never touched
    default = tmp_path / "home" / "data" / "orchestrator.db"
    assert not default.exists()
    assert not (Path.cwd() / "--json").exists()


def _all_commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield prefix + name, cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + name + " ")


def test_every_command_has_help(cli):
    names = [n for n, _ in _all_commands(cli_group)]
    for expected in ("init", "submit", "claim", "heartbeat", "release", "recover", "cancel",
                     "checkpoint", "resolve", "verify", "status", "ls", "show", "events",
                     "doctor", "backup"):
        assert expected in names
    assert (cli_group.help or "").strip()
    for name, cmd in _all_commands(cli_group):
        assert (cmd.help or "").strip(), f"{name} has no help"
        assert (cmd.get_short_help_str() or "").strip(), name
        r = cli(*name.split(), "--help")
        assert r.code == 0, (name, r)
        assert f"orch {name}" in r.out and "Usage:" in r.out
        if not isinstance(cmd, click.Group):  # the common options, after the name
            assert "--db" in r.out and "--json" in r.out, name
    r = cli("--help")
    assert r.code == 0 and all(n in r.out for n in cli_group.commands)


def test_every_option_has_help(cli):
    for name, cmd in [("", cli_group), *_all_commands(cli_group)]:
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"orch {name} {param.opts[0]}: no help"
        r = cli(*name.split(), "--help")
        assert r.code == 0 and "jq" not in r.out, (name, r)  # no example needs a tool not named


def test_submit_offers_only_the_kinds_it_accepts(cli, orch):
    for kind in KINDS:
        if kind in SUBMIT_KINDS:
            assert orch.submit_task(kind=kind)["kind"] == kind
        else:
            with pytest.raises(InvalidInput, match="under its parent's lease"):
                orch.submit_task(kind=kind)
    r = cli("submit", "--help")
    assert "[task|session]" in r.out and "goal|" not in r.out, r.out
    assert "orch goal add and orch tool exec" in " ".join(r.out.split())
    assert one_error_line(cli("submit", "--kind", "goal"), 2) == (
        "orch: error: Invalid value for '--kind': 'goal' is not one of 'task', 'session'.\n")


def test_recover_help_gives_the_installed_cron_line(cli):
    cron = [line for line in (ROOT / "scripts" / "orch-recover.cron").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(cron) == 1 and cron[0].startswith('* * * * * "$HOME/.local/bin/orch" recover')
    assert cron[0] in [line.strip() for line in cli("recover", "--help").out.splitlines()]


@pytest.mark.parametrize("args,message", [
    (["release", "1", "--token", "t"],
     "Missing option '--outcome'. Choose from: succeeded, failed, cancelled, requeue"),
    (["resolve", "1"],
     "Missing option '--outcome'. Choose from: succeeded, failed, retry, cancelled"),
    (["release", "1", "--token", "t", "--outcome", "done"],
     "Invalid value for '--outcome': 'done' is not one of "
     + "'succeeded', 'failed', 'cancelled', 'requeue'."),
    (["ls", "--status", "busy"],
     "Invalid value for '--status': 'busy' is not one of "
     + "'pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'unknown'."),
    (["claim", "--worker", "w", "--kind", "job"],
     "Invalid value for '--kind': 'job' is not one of 'task', 'session'."),
    (["submit", "--effect", "maybe"],
     "Invalid value for '--effect': 'maybe' is not one of 'idempotent', 'unsafe'."),
    (["daemon", "--synchronous", "off"],
     "Invalid value for '--synchronous': 'off' is not one of 'full', 'normal'."),
])
def test_choice_errors_are_clean_single_lines(cli, args, message):
    assert one_error_line(cli(*args), 2) == f"orch: error: {message}\n"


@pytest.mark.parametrize("args,code", [
    (["frobnicate"], 2),
    (["claim"], 2),  # --worker missing
    (["submit", "--priority", "high"], 2),
    (["submit", "--nope"], 2),
    (["show", "abc"], 2),
    (["show", "12345"], 5),
    (["release", "1", "--token", "t", "--outcome", "succeeded"], 5),
    (["submit", "--payload", "{"], 2),
    (["checkpoint", "1", "--token", "t", "--data", "1"], 5),
])
def test_errors_are_one_line(cli, args, code):
    cli("init")
    one_error_line(cli(*args), code)


def test_errors_from_every_failing_exit_code(cli, clock):
    a = submit(cli)
    c = claim(cli, "--ttl", "1")
    clock.tick(2)
    one_error_line(cli("heartbeat", str(a), "--token", c["token"]), 4)
    one_error_line(cli("claim", "--worker", "w", "--ttl", "0"), 2)
    cli("recover")
    one_error_line(cli("resolve", str(a), "--outcome", "retry"), 6)
    one_error_line(cli("cancel", "77"), 5)
