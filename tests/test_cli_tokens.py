"""Tokens are secrets: they may come from ORCH_TOKEN, a file or stdin instead of the
command line (worker.sh keeps them off it), and show, ls, events and status never print
them (fences yes); several leases heartbeated at once exit 4 if any one is stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, claim, db_rows, ok, one_error_line, submit

from orchestrator.rules import hash_token


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
