"""Another process holding the write lock: the CLI gives up within its busy budget with
exit 7 and writes nothing, and works again once the lock is gone; the daemon keeps
answering reads while its write waits."""

from __future__ import annotations

import subprocess
import sys
import time

import apsw
from conftest import HELPERS, doctor_ok, fetch_all, orch_process, sqlite_connection
from helpers.daemon_wire import Raw, serves


def test_submit_gives_up_with_exit_7_while_another_process_holds_the_write_lock(db_path,
                                                                               tmp_path):
    assert orch_process("init", db=db_path).returncode == 0
    holder = subprocess.Popen([sys.executable, str(HELPERS / "lock_holder.py"), str(db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        t0 = time.monotonic()
        p = orch_process("submit", "--payload", '{"x": 1}', db=db_path,
                         env={"ORCH_BUSY_TIMEOUT": "0.5"})
        elapsed = time.monotonic() - t0
        assert holder.poll() is None  # the lock was held the whole time
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
        holder.stderr.close()
    assert holder.returncode == 0
    assert p.returncode == 7, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orch: error: database is busy"), p.stderr
    assert p.stdout == ""
    assert 0.4 <= elapsed < 5, elapsed  # it honoured the 0.5 s budget, not the default 10 s
    # Nothing was written.
    conn = sqlite_connection(db_path)
    assert fetch_all(conn, "SELECT count(*) FROM items") == [(0,)]
    assert fetch_all(conn, "SELECT count(*) FROM event_log") == [(0,)]
    conn.close()
    # With the lock gone the same command works.
    p = orch_process("submit", "--payload", '{"x": 1}', db=db_path,
                     env={"ORCH_BUSY_TIMEOUT": "0.5"})
    assert p.returncode == 0, p.stderr


def test_a_file_locked_by_another_process_does_not_stop_the_daemon(start_daemon):
    """The group commit runs in the loop's thread, but never waits there for the lock."""
    d = start_daemon()
    with Raw(d.sock) as a, Raw(d.sock) as b:
        item = a.result("submitTask", {"queue": "lk"})
        holder = apsw.Connection(str(d.db))
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        try:
            a.send_json({"jsonrpc": "2.0", "id": "w", "method": "submitTask",
                         "params": {"queue": "lk", "payload": 2}})
            time.sleep(0.3)
            t = time.monotonic()
            assert b.result("ping")["pong"] is True
            assert b.result("getTask", {"item_id": item["id"]})["id"] == item["id"]
            assert time.monotonic() - t < 1.0  # answered while the write waits
        finally:
            holder.execute("COMMIT")
            holder.close()
        reply = a.reply(timeout=15)
        assert reply["id"] == "w" and reply["result"]["payload"] == 2
        assert b.result("listTasks", {"queue": "lk"})[0]["id"] == reply["result"]["id"]
    assert serves(d.sock)
    doctor_ok(d.db)
