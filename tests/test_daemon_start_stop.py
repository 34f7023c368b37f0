"""Starting and stopping the daemon: on SIGTERM or SIGINT it stops accepting, finishes
what is in flight, checkpoints the WAL and removes its socket; a second daemon on a live
socket refuses to start; a killed daemon's stale socket is removed by the next one."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import db_rows, doctor_ok, orch_process
from helpers.daemon_wire import Closed, Raw, claim_in_thread, serves, wait_until


def wal_is_checkpointed(db: Path) -> bool:
    wal = db.with_name(db.name + "-wal")
    return not wal.exists() or wal.stat().st_size == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_with_requests_in_flight(start_daemon, sig):
    d = start_daemon()
    got: list = []
    parked = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["void"], "wait": 30}, got)
    acked: list[str] = []
    turned_away: list[dict] = []
    stop = threading.Event()

    def spam():
        try:
            with Raw(d.sock, timeout=10) as r:
                for i in itertools.count():
                    if stop.is_set():
                        return
                    reply = r.call("submitTask", {"queue": "spam", "key": f"k{i}"})
                    if "error" in reply:  # sent while stopping: answered, not run
                        turned_away.append({"key": f"k{i}", **reply["error"]})
                        return
                    if reply["result"]["created"]:
                        acked.append(f"k{i}")
        except (Closed, OSError, TimeoutError, json.JSONDecodeError):
            return  # the daemon closed the connection while stopping

    spammer = threading.Thread(target=spam)
    spammer.start()
    assert wait_until(lambda: len(acked) >= 20, 10)
    t = time.monotonic()
    code = d.stop(sig)
    took = time.monotonic() - t
    stop.set()
    spammer.join(10)
    parked.join(10)
    assert code == 0
    assert took < 5, took
    assert got and got[0][2] == {"jsonrpc": "2.0", "id": got[0][2]["id"], "result": None}
    assert not d.sock.exists()
    assert wal_is_checkpointed(d.db)
    keys = {k for (k,) in db_rows(d.db, "SELECT key FROM items WHERE queue='spam'")}
    assert set(acked) <= keys
    for e in turned_away:
        assert e["code"] == 1005 and e["data"]["delivered"] is False, e
        assert e["key"] not in keys
    doctor_ok(d.db)


def test_second_daemon_on_the_same_socket_refuses(start_daemon, short_tmp):
    d = start_daemon()
    other_db = short_tmp / "other" / "orch.db"
    p = orch_process("--socket", str(d.sock), "daemon", "--log-file",
                     str(short_tmp / "second.log"), db=other_db, timeout=30)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("orch: error:") and str(d.sock) in err and "already" in err, err
    assert d.sock.exists() and d.proc.poll() is None  # the first one is untouched
    assert serves(d.sock)


def test_stale_socket_of_a_killed_daemon_is_removed(start_daemon):
    d = start_daemon()
    with d.client() as c:
        item = c.submit_task({"before": "kill"})
    d.kill()
    assert d.sock.exists()
    with pytest.raises(ConnectionRefusedError), Raw(d.sock):
        pass
    d2 = start_daemon(db=d.db, sock=d.sock)
    with d2.client() as c:
        assert c.get_task(item["id"])["payload"] == {"before": "kill"}
    assert serves(d2.sock)
    assert d2.stop() == 0 and not d2.sock.exists()
