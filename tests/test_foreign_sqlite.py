"""Other SQLite programs on orch's file while the daemon serves it.

SQLite's locks on the database are POSIX locks, and closing any descriptor of a file
drops every such lock the process holds on it. orch once opened and closed the file
for each new connection, so the daemon held no lock at all: a foreign program that
then opened and closed the file believed it was the last user, checkpointed and
deleted the WAL the daemon still had open, and from then on the daemon and everyone
else wrote to different WAL files (acknowledged submits lost, ids handed out twice).
These tests run real foreign programs (Python's sqlite3 module, the sqlite3 shell)
beside a loaded daemon and embedded CLI writers, then count every acknowledged write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HELPERS, db_rows, orch_process

from orchestrator import Orchestrator
from orchestrator.livestate import daemon_lock_path

pytestmark = pytest.mark.slow
SQLITE_SHELL = shutil.which("sqlite3")


def foreign_read(db: Path, tool: str) -> None:
    """Open the file with another SQLite, read, and close it: the last-user path."""
    if tool == "shell":
        cmd = [SQLITE_SHELL, str(db), "SELECT count(*) FROM items;"]
    else:
        cmd = [sys.executable, str(HELPERS / "foreign_sqlite.py"), str(db), "read"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr


def posix_locks_of(pid: int, path: Path) -> list[str]:
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return [line for line in Path("/proc/locks").read_text().splitlines()
            if " POSIX " in line and f" {pid} " in line and ident in line
            and "->" not in line]


def tools() -> list[str]:
    return ["python"] + (["shell"] if SQLITE_SHELL else [])


class CliWriter(threading.Thread):
    """Embedded `orch submit` processes, one after another, beside the daemon."""

    def __init__(self, db: Path, name: str):
        super().__init__(daemon=True)
        self.db, self.name = db, name
        self.acks: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            p = orch_process("--socket", str(self.db.parent / "no-daemon.sock"), "submit",
                             "--payload", json.dumps({"by": self.name, "n": n}), "--json",
                             db=self.db)
            assert p.returncode == 0, p.stderr
            self.acks.append((n, json.loads(p.stdout)["id"]))
            n += 1


def acknowledged(out_files: list[Path]) -> dict[tuple[str, int], int]:
    acks: dict[tuple[str, int], int] = {}
    for f in out_files:
        for line in f.read_text().splitlines():
            kind, n, *rest = line.split(" ", 2)
            assert kind == "ack", f"{f.name}: {line}"
            acks[(f.stem, int(n))] = int(rest[0])
    return acks


def assert_every_ack_once(db: Path, acks: dict[tuple[str, int], int]) -> None:
    rows = db_rows(db, "SELECT id, payload FROM items")
    by_payload: dict[tuple[str, int], list[int]] = {}
    for item_id, payload in rows:
        p = json.loads(payload)
        by_payload.setdefault((p["by"], p["n"]), []).append(item_id)
    lost = [k for k in acks if k not in by_payload]
    doubled = {k: v for k, v in by_payload.items() if len(v) > 1}
    assert not lost, f"{len(lost)} acknowledged submits lost: {lost[:5]}"
    assert not doubled, f"submits stored twice: {doubled}"
    ids = list(acks.values())
    assert len(set(ids)) == len(ids), "an item id was handed out twice"
    wrong = {k: (v, by_payload[k]) for k, v in acks.items() if by_payload[k] != [v]}
    assert not wrong, f"acknowledged ids that hold another item: {wrong}"


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_the_daemon_keeps_its_lock_on_the_file_while_others_come_and_go(start_daemon):
    d = start_daemon()
    with d.client() as c:
        c.submit_task({"n": 1})
        c.get_task(1)  # a reader connection opens too
    assert posix_locks_of(d.proc.pid, d.db), "the daemon holds no lock on its database"
    wal = os.stat(f"{d.db}-wal").st_ino
    for tool in tools():
        foreign_read(d.db, tool)
        assert posix_locks_of(d.proc.pid, d.db)
        assert os.stat(f"{d.db}-wal").st_ino == wal, f"{tool} replaced the daemon's WAL"
        with d.client() as c:
            assert c.get_task(1)["payload"] == {"n": 1}
            c.submit_task({"n": 2})


@pytest.mark.parametrize("tool", tools())
def test_foreign_readers_under_load_lose_and_double_nothing(start_daemon, tmp_path, tool):
    d = start_daemon()
    stop = tmp_path / "stop"
    outs = [tmp_path / f"sock{i}.txt" for i in range(4)]
    clients = [subprocess.Popen([sys.executable, str(HELPERS / "socket_submitter.py"),
                                 str(d.sock), f.stem, str(f), str(stop)]) for f in outs]
    writers = [CliWriter(d.db, f"cli{i}") for i in range(2)]
    for w in writers:
        w.start()
    try:
        deadline = time.monotonic() + 60
        while not all(f.exists() and f.stat().st_size for f in outs):
            assert time.monotonic() < deadline, "the socket clients did not start"
            time.sleep(0.05)
        for _ in range(4):
            foreign_read(d.db, tool)
            with d.client() as c:  # the daemon still answers from its own state
                assert c.get_task(1)["id"] == 1
                assert c.status()["counts"]["pending"] > 0
            time.sleep(0.2)
    finally:
        stop.touch()
        for w in writers:
            w.stop.set()
        for p in clients:
            assert p.wait(60) == 0
        for w in writers:
            w.join(60)
    assert d.stop() == 0
    acks = acknowledged(outs)
    for w in writers:
        acks.update({(w.name, n): i for n, i in w.acks})
    assert len(acks) > 50 and all(w.acks for w in writers)
    assert_every_ack_once(d.db, acks)
    p = orch_process("doctor", db=d.db)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_foreign_exclusive_lock_still_blocks_the_daemon(start_daemon):
    d = start_daemon()
    with d.client() as c:
        c.submit_task({"n": 1})
    foreign_read(d.db, "python")  # the program that once made the daemon drop its lock
    with subprocess.Popen([sys.executable, str(HELPERS / "foreign_sqlite.py"), str(d.db),
                           "exclusive"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdout.readline().strip() == "locked"
        answer: list[dict] = []

        def submit() -> None:
            with d.client(timeout=60) as c:
                answer.append(c.submit_task({"n": 2}))
        t = threading.Thread(target=submit)
        t.start()
        t.join(1.0)
        assert t.is_alive() and not answer, "the daemon wrote under another's exclusive lock"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        released_at = int(holder.stdout.readline())
        t.join(30)
        assert answer and answer[0]["created_at"] >= released_at
    with d.client() as c:
        assert [i["id"] for i in c.list_tasks()] == [2, 1]


def test_doctor_is_clean_after_kill_9_and_restart_with_a_foreign_reader(start_daemon,
                                                                       tmp_path):
    d = start_daemon()
    stop = tmp_path / "stop"
    out = tmp_path / "sock0.txt"
    client = subprocess.Popen([sys.executable, str(HELPERS / "socket_submitter.py"),
                               str(d.sock), out.stem, str(out), str(stop)])
    deadline = time.monotonic() + 30
    while not (out.exists() and out.read_text().count("\n") >= 20):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    foreign_read(d.db, "python")
    time.sleep(0.2)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.stop()
    assert client.wait(60) == 0  # it stops once the daemon is gone
    lines = out.read_text().splitlines()
    acks = {(out.stem, int(n)): int(i) for kind, n, i in
            (line.split(" ", 2) for line in lines if line.startswith("ack "))}
    d2 = start_daemon(db=d.db, sock=d.sock)
    assert_every_ack_once(d.db, acks)
    p = orch_process("doctor", db=d.db)
    assert p.returncode == 0, p.stdout + p.stderr
    with d2.client() as c:
        c.submit_task({"after": "restart"})
    foreign_read(d.db, "python")
    p = orch_process("doctor", db=d.db)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_doctor_sees_a_daemon_that_lost_its_lock_and_its_wal(db_path, tmp_path):
    """A stand-in daemon that drops its locks the way orch once did: doctor names both
    the missing lock and, once a foreign program deleted it, the WAL that is not on disk."""
    Orchestrator(db_path).close()
    script = tmp_path / "broken_daemon.py"
    script.write_text(
        "import fcntl, os, sys, apsw\n"
        "db = sys.argv[1]\n"
        "fd = os.open(db + '.daemon.lock', os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
        "conn = apsw.Connection(db)\n"
        "conn.execute('INSERT INTO workers VALUES (?, 0, 0, 0)', ('w',))\n"
        "os.close(os.open(db, os.O_RDONLY))  # the old bug: every POSIX lock on db is gone\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n")
    with subprocess.Popen([sys.executable, str(script), str(db_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as broken:
        assert broken.stdout.readline().strip() == "ready"
        p = orch_process("doctor", db=db_path)
        assert p.returncode == 1, p.stdout
        assert f"pid {broken.pid}) holds no lock" in p.stdout, p.stdout
        foreign_read(db_path, "python")  # the last-user checkpoint deletes the WAL
        p = orch_process("doctor", db=db_path)
        assert p.returncode == 1
        assert "is no longer the one on disk" in p.stdout, p.stdout
        broken.kill()
    assert daemon_lock_path(db_path).exists()
    p = orch_process("doctor", db=db_path)  # no daemon holds the lock file now
    assert p.returncode == 0, p.stdout
