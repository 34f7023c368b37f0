"""scripts/agent_example.py, the README's agent example, run as a user runs it: it does
its work once, then has nothing left to do; killed with SIGKILL mid-send, the next run
resumes the session and reports the unsafe call as unknown instead of sending again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, events_of, kill9, reap, types_of

from orchestrator import Orchestrator

EXAMPLE = ROOT / "scripts" / "agent_example.py"


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
        reap(p)

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
