"""The CLI through the daemon: every command answers exactly as embedded; with no daemon
answering it uses the file itself, but only when the daemon provably did not get the
request (a request that may have run is never sent twice: exit 7); submits made while the
daemon restarts all land exactly once."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import db_rows, doctor_ok, orch_process
from helpers.daemon_wire import stale_socket

from orchestrator import Orchestrator, protocol

_VOLATILE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00( \((in [\d.]+ s|[\d.]+ s ago)\))?")


_TIME_FIELDS = {"lease_expires_at", "heartbeat_at", "created_at", "updated_at", "run_after",
                "now", "at", "token", "hash", "prev_hash", "first_seen", "last_seen"}


def _normal(out: str) -> object:
    """CLI output with times and tokens taken out, for comparing two runs."""
    try:
        doc = json.loads(out)
    except ValueError:
        return _VOLATILE.sub("<time>", out)

    def strip(v):
        if isinstance(v, dict):
            return {k: ("<x>" if k in _TIME_FIELDS else strip(x)) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(doc)


def _script(run) -> list[tuple]:
    """The same commands, run through ``run(*args)``; returns what each gave."""
    seen = []

    def step(*args: str):
        p = run(*args)
        seen.append((args, p.returncode, _normal(p.stdout), _normal(p.stderr.strip())))
        return p
    step("submit", "--payload", '{"n": 1}', "--key", "k1")
    step("submit", "--payload", '{"n": 1}', "--key", "k1")
    step("submit", "--payload", "[2]", "--priority", "3", "--json")
    c = json.loads(step("claim", "--worker", "w1", "--ttl", "30").stdout)
    token = c["token"]
    step("claim", "--worker", "w2", "--ttl", "30")
    step("claim", "--worker", "w2", "--queue", "empty")              # 3: nothing to claim
    step("release", str(c["id"]), "--token", "stale", "--outcome", "succeeded")   # 4
    step("heartbeat", str(c["id"]), "--token", "stale")               # 4
    step("verify", str(c["id"]), "--token", "stale")                  # 4
    step("show", "99")                                                # 5
    step("claim", "--worker", "w3", "--item", "99")                   # 5
    step("claim", "--worker", "w3", "--item", str(c["id"]))           # 6: live lease
    step("checkpoint", str(c["id"]), "--token", token, "--data", '{"page": 2}')
    step("release", str(c["id"]), "--token", token, "--outcome", "succeeded",
         "--result", '{"ok": true}')
    step("release", str(c["id"]), "--token", token, "--outcome", "succeeded")     # 4
    step("cancel", str(c["id"]))                                      # 6
    step("resolve", str(c["id"]), "--outcome", "retry")               # 6
    step("submit", "--queue", "bad queue")                            # 2
    step("submit", "--key", "k" * 600)                                # 2
    step("submit", "--payload", "{bad")                               # 2
    step("show", str(c["id"]), "--json")
    step("ls")
    step("ls", "--json", "--status", "running")
    step("status", "--json")
    step("events", "--json")
    step("recover", "--json")
    step("cancel", "1")
    return seen


def test_cli_through_daemon_matches_embedded(start_daemon, short_tmp):
    d = start_daemon()
    cli_home = short_tmp / "cli-home"  # no db here: a CLI that fell back would make one
    embedded_db = short_tmp / "embedded" / "orch.db"
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side, to save time
        f_through = pool.submit(_script, lambda *a: orch_process(
            *a, "--socket", str(d.sock), env={"OPENCLAW_HOME": str(cli_home)}))
        f_alone = pool.submit(_script, lambda *a: orch_process(*a, db=embedded_db))
        through, alone = f_through.result(), f_alone.result()
    for (args, code_d, out_d, err_d), (_, code_e, out_e, err_e) in zip(through, alone,
                                                                       strict=True):
        assert (code_d, out_d, err_d) == (code_e, out_e, err_e), args
    codes = [code for _, code, _, _ in through]
    assert codes == [0, 0, 0, 0, 0, 3, 4, 4, 4, 5, 5, 6, 0, 0, 4, 6, 6, 2, 2, 2,
                     0, 0, 0, 0, 0, 0, 0]
    for args, code, _, err in through:
        if code not in (0, 3) and args[0] != "verify":  # verify answers on stdout
            assert err.startswith("orch: error: ") and "\n" not in err, (args, err)
    assert not (cli_home / "data").exists()  # every command went to the daemon
    assert len(db_rows(d.db, "SELECT id FROM items")) == 2


def test_cli_falls_back_to_embedded_when_nothing_answers(short_tmp, start_daemon):
    db = short_tmp / "fb" / "orch.db"
    # no socket file at all
    p = orch_process("submit", "--key", "a", "--socket", str(short_tmp / "none.sock"), db=db)
    assert p.returncode == 0, p.stderr
    # a socket file nobody listens on (left by a dead daemon)
    stale = short_tmp / "stale.sock"
    stale_socket(stale)
    assert stale.exists()
    t = time.monotonic()
    p = orch_process("submit", "--key", "b", "--socket", str(stale), "--json", db=db)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["created"] is True
    assert time.monotonic() - t < 5
    p = orch_process("claim", "--worker", "w", "--socket", str(stale), db=db)
    assert p.returncode == 0 and json.loads(p.stdout)["key"] == "a"
    # a live daemon that serves another database: the CLI opens its own file
    d = start_daemon()
    p = orch_process("submit", "--key", "c", "--socket", str(d.sock), db=db)
    assert p.returncode == 0, p.stderr
    keys = sorted(k for (k,) in db_rows(db, "SELECT key FROM items"))
    assert keys == ["a", "b", "c"]
    assert db_rows(d.db, "SELECT count(*) FROM items") == [(0,)]
    # and through ORCH_SOCKET, with nothing answering
    p = orch_process("ls", "--json", env={"ORCH_SOCKET": str(stale)}, db=db)
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 3
    assert os.path.exists(stale)


def fake_daemon(sock: Path, db: Path, after_ping: str) -> threading.Thread:
    """A peer on ``sock`` that answers one ping as a daemon serving ``db`` would, then,
    on the request that follows: "gone" (closes, and stops listening), "unread" (closes
    with the request unread), "stopping" (answers that it turned it away unread), or
    "lost" (reads it and closes without an answer)."""
    import select
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(8)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            f = conn.makefile("rb")
            ping = json.loads(f.readline())
            conn.sendall(protocol.encode(protocol.result(ping["id"], {
                "pong": True, "now": 0, "db": str(db.resolve()), "pid": 0,
                "mode": "daemon"})))
            if after_ping == "gone":
                return
            if after_ping == "unread":
                select.select([conn], [], [], 10)
                return
            request = json.loads(f.readline())
            if after_ping == "stopping":
                conn.sendall(protocol.encode(protocol.error(request["id"], 1005,
                             "the daemon is stopping; the request was not carried out",
                             {"reason": "unavailable", "delivered": False})))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("after_ping,code", [
    ("gone", 0), ("unread", 0), ("stopping", 0),  # provably not delivered: to the file
    ("lost", 7),  # it may have been carried out: never sent twice
])
def test_cli_falls_back_to_the_file_only_when_the_daemon_provably_did_not_get_it(
        short_tmp, after_ping, code):
    db, sock = short_tmp / "orch.db", short_tmp / "orch.sock"
    Orchestrator(db).close()
    peer = fake_daemon(sock, db, after_ping)
    p = orch_process("--socket", str(sock), "--json", "submit", "--payload", '"x"', db=db)
    peer.join(10)
    assert p.returncode == code, (p.stdout, p.stderr)
    found = db_rows(db, "SELECT id FROM items")
    if code == 0:
        assert found == [(json.loads(p.stdout)["id"],)]
    else:
        assert p.stderr.startswith("orch: error:") and "may or may not" in p.stderr
        assert found == []


def test_cli_uses_the_file_when_the_socket_refuses(short_tmp):
    db, sock = short_tmp / "orch.db", short_tmp / "orch.sock"
    stale_socket(sock)
    p = orch_process("--socket", str(sock), "--json", "submit", "--payload", '"x"', db=db)
    assert p.returncode == 0, p.stderr
    assert db_rows(db, "SELECT id FROM items") == [(json.loads(p.stdout)["id"],)]


def test_cli_submits_while_the_daemon_restarts_all_land_exactly_once(start_daemon):
    d = start_daemon()
    db, sock = d.db, d.sock
    results: list[tuple[str, subprocess.CompletedProcess]] = []
    stop = threading.Event()

    def submitter(name: str) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            tag = f"{name}-{n}"
            results.append((tag, orch_process(
                "--socket", str(sock), "--json", "submit", "--queue", "rs",
                "--payload", json.dumps(tag), db=db)))

    threads = [threading.Thread(target=submitter, args=(f"s{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.8)
            assert d.stop() == 0
            d = start_daemon(db=db, sock=sock)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [(tag, p.returncode, p.stderr) for tag, p in results if p.returncode != 0]
    assert not failed, failed
    assert len(results) >= 10
    stored = dict(db_rows(db, "SELECT json_extract(payload, '$'), id FROM items "
                           "WHERE queue = 'rs'"))
    assert len(stored) == db_rows(db, "SELECT count(*) FROM items WHERE queue='rs'")[0][0]
    assert stored == {tag: json.loads(p.stdout)["id"] for tag, p in results}
    doctor_ok(db)
