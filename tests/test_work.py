"""``orch work`` with real processes: the worker, its commands and (in one mode) the daemon.

Each behaviour is checked embedded and through a daemon subprocess. The commands are
tests/helpers/work_child.py, told by their payload what to do.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HELPERS, db_rows, orch_process

from orchestrator import Orchestrator

CHILD = [sys.executable, str(HELPERS / "work_child.py")]


class Setup:
    """A database, served by a daemon or not, and ``orch work`` processes on it."""

    def __init__(self, mode: str, db: Path, sock: Path, tmp: Path):
        self.mode, self.db, self.sock, self.tmp = mode, db, sock, tmp
        self.log = tmp / "children.jsonl"
        self.api = None

    def submit(self, *payloads, **kw) -> list[int]:
        return [self.api.submit_task(p, **kw)["id"] for p in payloads]

    def work(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--db", str(self.db), "--socket",
             str(self.sock), "--json", "work", *args, "--", *CHILD],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return orch_process("--socket", str(self.sock), *args, db=self.db)

    def records(self, event: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if event is None or r["event"] == event]

    def wait_for(self, what, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = what()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def lease_ended(self, item_id: int) -> None:
        """Wait until the item's lease has expired (or was recovered already)."""
        self.wait_for(lambda: db_rows(
            self.db, "SELECT 1 FROM items WHERE id = ? AND (status != 'running' OR "
                     "lease_expires_at < ?)", (item_id, int(time.time() * 1000))))

    def released(self, item_id: int) -> list[tuple]:
        return db_rows(self.db, "SELECT fence, detail FROM event_log WHERE item_id = ? AND "
                                "type = 'released' ORDER BY seq", (item_id,))


@pytest.fixture(params=["embedded", "daemon"])
def setup(request, short_tmp: Path, start_daemon):
    s = Setup(request.param, short_tmp / "orch.db", short_tmp / "orch.sock", short_tmp)
    if request.param == "daemon":
        s.api = start_daemon(db=s.db, sock=s.sock).client()
    else:
        s.api = Orchestrator(s.db)
    yield s
    s.api.close()


def finish(p: subprocess.Popen, timeout: float = 20.0) -> dict:
    """The worker's exit: it must be 0, with its summary on stdout."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"orch work did not stop: {err}") from None
    assert p.returncode == 0, err
    return json.loads(out)


def dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_the_exit_status_decides_the_outcome(setup: Setup) -> None:
    ok, text, crash, later = setup.submit(
        {"echo": True}, {"stdout": "plain words\n"},
        {"exit": 1, "stderr": "x" * 10_000 + "\nthe last line"}, {"exit": 75, "stderr": "busy"},
        max_attempts=2)
    summary = finish(setup.work("--max-items", "4", "--concurrency", "2", "--retry-in", "60"))
    assert summary | {"worker_id": None} == {
        "worker_id": None, "items": 4, "succeeded": 2, "failed": 1, "retry_later": 1,
        "cancelled": 0, "requeued": 0, "lost": 0, "unreleased": 0}

    item = setup.api.get_task(ok)
    assert item["status"] == "succeeded"
    assert item["result"] == {  # stdout was JSON: it is the result
        "payload": {"echo": True}, "ORCH_ITEM_ID": str(ok), "ORCH_FENCE": str(item["fence"]),
        "ORCH_ATTEMPT": "1", "ORCH_QUEUE": "default", "ORCH_WORKER": summary["worker_id"],
        "has_token": True}
    assert setup.api.get_task(text)["result"] == "plain words"

    item = setup.api.get_task(crash)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert item["error"].startswith("exit 1: xxx") and item["error"].endswith("the last line")
    assert len(item["error"]) <= len("exit 1: ") + 4096

    item = setup.api.get_task(later)  # 75: requeued, claimable after --retry-in
    assert (item["status"], item["attempts"], item["error"]) == ("pending", 1, "exit 75: busy")
    assert item["run_after"] - item["updated_at"] == 60_000
    assert [json.loads(d)["outcome"] for _, d in setup.released(later)] == ["requeue"]

    # The crashed item comes back after its backoff; its second crash is its last attempt.
    assert finish(setup.work("--max-items", "1"))["failed"] == 1
    item = setup.api.get_task(crash)
    assert (item["status"], item["attempts"]) == ("dead", 2)


def test_a_lost_lease_stops_the_command_and_releases_nothing(setup: Setup) -> None:
    (item_id,) = setup.submit({"log": str(setup.log), "hang": True, "ignore_term": True})
    p = setup.work("--ttl", "1.5", "--kill-after", "0.5")
    try:
        (started,) = setup.wait_for(lambda: setup.records("start"))
        # The worker freezes (a pause, a suspended laptop) past its lease; another
        # worker takes the item over meanwhile.
        p.send_signal(signal.SIGSTOP)
        setup.lease_ended(item_id)
        thief = setup.cli("claim", "--worker", "thief", "--item", str(item_id))
        assert thief.returncode == 0, thief.stderr
    finally:
        p.send_signal(signal.SIGCONT)
    # Its next heartbeat is refused: the command, deaf to SIGTERM, is killed.
    setup.wait_for(lambda: dead(started["pid"]), timeout=5)
    p.send_signal(signal.SIGTERM)
    assert finish(p)["lost"] == 1
    item = setup.api.get_task(item_id)
    assert (item["status"], item["worker_id"]) == ("running", "thief")
    assert item["fence"] == json.loads(thief.stdout)["fence"] > started["fence"]
    assert setup.released(item_id) == []  # nothing under the old fence, nor any other


def test_sigterm_lets_commands_finish_then_requeues_the_rest(setup: Setup) -> None:
    go = setup.tmp / "go"
    finishing, hanging, *untouched = setup.submit(
        {"log": str(setup.log), "wait_for": str(go)}, {"log": str(setup.log), "hang": True},
        {}, {})
    p = setup.work("--concurrency", "2", "--grace", "2", "--kill-after", "0.5")
    setup.wait_for(lambda: len(setup.records("start")) == 2)
    p.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    go.touch()  # one command ends within the grace period, the other never does
    summary = finish(p)
    took = time.monotonic() - signalled
    assert 2 <= took < 10, took
    assert (summary["items"], summary["succeeded"], summary["requeued"]) == (2, 1, 1)
    assert setup.api.get_task(finishing)["status"] == "succeeded"
    item = setup.api.get_task(hanging)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert [json.loads(d)["outcome"] for _, d in setup.released(hanging)] == ["requeue"]
    (hung,) = [r for r in setup.records("start") if r["id"] == hanging]
    assert dead(hung["pid"])
    for item_id in untouched:  # never claimed once the stop was asked for
        assert setup.api.get_task(item_id)["attempts"] == 0


def test_concurrency_n_runs_n_commands_at_once_never_two_on_one_item(setup: Setup) -> None:
    barrier = setup.tmp / "barrier"
    barrier.mkdir()
    ids = setup.submit(*[{"log": str(setup.log), "sleep": 0.2,
                          "barrier": {"dir": str(barrier), "count": 3}} for _ in range(7)])
    summary = finish(setup.work("--concurrency", "3", "--max-items", "7"), timeout=30)
    assert (summary["items"], summary["succeeded"]) == (7, 7)
    assert all(r["met"] for r in setup.records("barrier"))  # three ran at once
    spans = {r["id"]: [r["t"]] for r in setup.records("start")}
    assert sorted(spans) == sorted(ids)  # each item's command ran once
    for r in setup.records("end"):
        spans[r["id"]].append(r["t"])
    edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 3
    assert all(setup.api.get_task(i)["attempts"] == 1 for i in ids)


def test_a_cancel_request_stops_the_command_and_releases_cancelled(setup: Setup) -> None:
    (item_id,) = setup.submit({"log": str(setup.log), "hang": True})
    p = setup.work("--ttl", "1.5", "--max-items", "1")
    (started,) = setup.wait_for(lambda: setup.records("start"))
    setup.api.cancel_task(item_id)
    assert finish(p)["cancelled"] == 1
    assert setup.api.get_task(item_id)["status"] == "cancelled"
    assert dead(started["pid"])


def test_a_reclaimed_item_waits_for_its_old_command_to_be_gone(short_tmp: Path) -> None:
    """After a lost lease the same process may claim the item again while its old
    command is still being stopped: the new command starts only once the old is dead."""
    s = Setup("embedded", short_tmp / "orch.db", short_tmp / "orch.sock", short_tmp)
    with Orchestrator(s.db) as s.api:
        (item_id,) = s.submit({"log": str(s.log), "hang_attempts": [1], "ignore_term": True})
        p = s.work("--concurrency", "2", "--ttl", "1.5", "--kill-after", "3", "--max-items", "2")
        try:
            (first,) = s.wait_for(lambda: s.records("start"))
            p.send_signal(signal.SIGSTOP)
            s.lease_ended(item_id)
            recovered = s.cli("--json", "recover")  # back to pending, after a short backoff
            assert json.loads(recovered.stdout)["count"] == 1, recovered
        finally:
            p.send_signal(signal.SIGCONT)
        summary = finish(p)
        assert (summary["lost"], summary["succeeded"]) == (1, 1)
        second = [r for r in s.records("start") if r["attempt"] == 2]
        assert second and second[0]["earlier_alive"] == []
        assert dead(first["pid"])
        assert [f for f, _ in s.released(item_id)] == [second[0]["fence"]]


@pytest.mark.parametrize("args, message", [
    (["--", "no-such-command-here"], "not found"),
    (["--queue", "bad queue", "--", "true"], "queue"),
    (["--ttl", "0", "--", "true"], "ttl"),
    ([], "Missing argument"),
])
def test_bad_options_are_refused_before_anything_is_claimed(cli, db_path: Path, args,
                                                            message) -> None:
    r = cli("work", *args)
    assert r.code == 2, r
    assert message in r.err and r.err.count("\n") == 1
    assert not db_path.exists()
