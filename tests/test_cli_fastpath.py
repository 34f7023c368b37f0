"""`orch claim` and `orch release` through the daemon skip click (start-up per call),
and answer exactly as the full CLI does: same output, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FULL = "import sys; from orchestrator.cli import main; main(sys.argv[1:])"


def orch(d, *args: str, full: bool = False, env: dict | None = None,
         importtime: bool = False) -> subprocess.CompletedProcess:
    """`orch` by its entry point (the fast path when it applies), or the full CLI."""
    head = [sys.executable, *(["-X", "importtime"] if importtime else [])]
    head += ["-c", FULL] if full else ["-m", "orchestrator"]
    return subprocess.run([*head, "--db", str(d.db), "--socket", str(d.sock), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def imported(p: subprocess.CompletedProcess) -> set[str]:
    return {line.split("|")[-1].strip() for line in p.stderr.splitlines()
            if line.startswith("import time:")}


def test_claim_and_release_skip_click_and_answer_as_the_full_cli(start_daemon):
    d = start_daemon()
    with d.client() as c:
        for n in range(3):
            c.submit_task({"n": n})
    p = orch(d, "claim", "--worker", "w1", "--ttl", "60", importtime=True)
    assert p.returncode == 0, p.stderr
    assert "click" not in imported(p) and "apsw" not in imported(p)
    claim = json.loads(p.stdout)
    assert claim["worker_id"] == "w1" and claim["lease_ttl_ms"] == 60_000 and claim["token"]

    p = orch(d, "release", str(claim["id"]), "--outcome", "succeeded", "--result", '{"ok": 1}',
             env={"ORCH_TOKEN": claim["token"]}, importtime=True)
    assert p.returncode == 0 and "click" not in imported(p), p.stderr
    assert p.stdout.rstrip("\n").splitlines()[-1] == f"item {claim['id']}: succeeded"
    with d.client() as c:
        assert c.get_task(claim["id"])["result"] == {"ok": 1}

    # Refusals and errors: word for word what the full CLI says, and nothing changes.
    for args in (["release", str(claim["id"]), "--token", claim["token"], "--outcome",
                  "failed"],
                 ["release", "99", "--token", "x", "--outcome", "succeeded"],
                 ["release", "2", "--token", "x", "--outcome", "succeeded", "--result", "{"],
                 ["claim", "--worker", "w1", "--queue", "bad queue"],
                 ["claim", "--worker", "w1", "--item", "1"],
                 ["claim", "--worker", "w1", "--kind", "goal"],
                 ["release", "2", "--outcome", "succeeded"]):  # no token: click's usage error
        fast, full = orch(d, *args), orch(d, *args, full=True)
        assert (fast.returncode, fast.stdout, fast.stderr) == \
            (full.returncode, full.stdout, full.stderr), args
        assert fast.returncode in (2, 4, 5, 6) and fast.stderr.startswith("orch: error: ")


def test_nothing_to_claim_and_json_output_match_the_full_cli(start_daemon):
    d = start_daemon()
    fast, full = orch(d, "claim", "--worker", "w", "--queue", "empty"), \
        orch(d, "claim", "--worker", "w", "--queue", "empty", full=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == (3, "", "orch: nothing to claim\n")
    assert (full.returncode, full.stdout, full.stderr) == (3, "", "orch: nothing to claim\n")
    with d.client() as c:
        c.submit_task(1)
        c.submit_task(2)
    claims = [json.loads(orch(d, "--json", "claim", "--worker=w").stdout) for _ in range(2)]
    fast = orch(d, "release", str(claims[0]["id"]), "--token", claims[0]["token"],
                "--outcome", "requeue", "--json")
    full = orch(d, "release", str(claims[1]["id"]), "--token", claims[1]["token"],
                "--outcome", "requeue", "--json", full=True)
    a, b = json.loads(fast.stdout), json.loads(full.stdout)
    assert set(a) == set(b) and a["status"] == b["status"] == "pending"


@pytest.mark.parametrize("args", [["claim", "--help"], ["claim", "--worker", "w",
                                                         "--token-file", "-"]])
def test_anything_else_goes_to_the_full_cli(start_daemon, args):
    d = start_daemon()
    fast, full = orch(d, *args), orch(d, *args, full=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == \
        (full.returncode, full.stdout, full.stderr)
