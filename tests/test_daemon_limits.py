"""What one client may hold of the daemon, and what happens past it: a line must end
within the line timeout of its first byte; an idle connection is closed (a parked claim
is not idle); connections over the cap get an error line (and the CLI then uses the
file); input buffered past the cap drops the client holding the most; out of file
descriptors, the daemon backs off and recovers, logging a line now and then."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from conftest import HELPERS, db_rows, orch_process
from helpers.daemon_wire import LIMIT, Closed, Raw, served, wait_until


def test_a_line_trickled_in_is_dropped_at_its_deadline(start_daemon):
    """Progress does not buy time: a line must end within the line timeout of its first
    byte, however steadily the rest trickles in."""
    d = start_daemon("--line-timeout", "1")
    trickler = Raw(d.sock)
    t0 = time.monotonic()
    trickler.send(b'{"jsonrpc":"2.0","id":1,"method":"submitTask","params":{"payload":"'
                  + b"x" * (1 << 20))
    dropped = False
    with served(d.sock) as other:
        while not dropped and time.monotonic() - t0 < 6:
            try:
                trickler.send(b"x")
            except OSError:
                dropped = True
                break
            dropped = trickler.closed_by_peer(0.2)
            assert other.result("ping")["pong"] is True  # served all along
        took = time.monotonic() - t0
        assert dropped, "a client trickling a line was never dropped"
        assert 0.9 <= took < 3, took
        assert other.result("submitTask", {"queue": "after"})["created"]
    trickler.close()
    assert db_rows(d.db, "SELECT count(*) FROM items WHERE queue != 'after'") == [(0,)]
    assert wait_until(lambda: "whose line was not complete 1 s after its first byte"
                      in d.log_text(), 5), d.log_text()


def test_idle_connections_are_closed_but_parked_claims_are_not(start_daemon):
    d = start_daemon("--idle-timeout", "1")
    idle = served(d.sock)
    t0 = time.monotonic()  # its last request was answered just now
    active = served(d.sock)
    parked = served(d.sock, timeout=10)
    parked.send_json({"jsonrpc": "2.0", "id": "p", "method": "claimTask",
                      "params": {"worker_id": "w", "queues": ["nothing"], "wait": 2.5}})
    for _ in range(6):  # a request every 0.3 s keeps a connection open
        assert active.result("ping")["pong"] is True
        time.sleep(0.3)
    assert idle.closed_by_peer(3)
    assert 0.9 <= time.monotonic() - t0 < 3
    # the parked claim was not idle: it gets its (empty) answer when its wait ends
    assert parked.reply(timeout=10) == {"jsonrpc": "2.0", "id": "p", "result": None}
    assert time.monotonic() - t0 >= 2.4
    assert parked.result("ping")["pong"] is True and active.result("ping")["pong"] is True
    for r in (idle, active, parked):
        r.close()
    assert wait_until(lambda: "idle connection(s): no request for 1 s" in d.log_text(), 5)


def test_connections_over_the_cap_get_an_error_line_and_the_cli_uses_the_file(start_daemon):
    d = start_daemon("--max-connections", "4")
    held = []
    for _ in range(4):  # the fixture's own first ping may take a moment to be let go
        assert wait_until(lambda: _try_served(d.sock, held), 5)
    extra = Raw(d.sock)
    error = extra.reply(timeout=5)["error"]
    assert error["code"] == LIMIT and error["data"]["reason"] == "limit"
    assert error["data"]["limit"] == 4 and error["data"]["delivered"] is False
    assert extra.closed_by_peer(5)
    extra.close()
    for r in held:  # those it holds are served meanwhile
        assert r.result("ping")["pong"] is True
    assert held[0].result("submitTask", {"queue": "held"})["created"]
    # The CLI was turned away unread, so it carries the request out on the file itself.
    p = orch_process("--socket", str(d.sock), "--json", "submit", "--queue", "cli", db=d.db)
    assert p.returncode == 0, p.stderr
    assert db_rows(d.db, "SELECT id FROM items WHERE queue='cli'") == [(p.stdout and
                                                                    json.loads(p.stdout)["id"],)]
    held.pop().close()  # room again
    assert wait_until(lambda: _try_served(d.sock, held), 5)
    for r in held:
        r.close()
    assert wait_until(lambda: "connection(s): 4 open, the most allowed" in d.log_text(), 5)


def _try_served(sock: Path, into: list) -> bool:
    try:
        into.append(served(sock, timeout=2))
        return True
    except (Closed, AssertionError, KeyError, OSError):
        return False


def test_input_buffered_past_the_cap_drops_the_client_holding_most(start_daemon):
    d = start_daemon("--max-buffered-mib", "2")
    small = Raw(d.sock)
    small.send(b'{"jsonrpc":"2.0","id":"small","method":"ping"' + b" " * (600 << 10))
    big = Raw(d.sock)
    big.send(b'{"jsonrpc":"2.0","id":"big","method":"ping","params":{"x":"'
             + b"x" * (1200 << 10))
    late = Raw(d.sock)
    try:
        late.send(b" " * (400 << 10))  # 2.2 MiB in all: past the cap
    except OSError:
        pass
    error = big.reply(timeout=5)["error"]
    assert error["code"] == LIMIT and error["data"]["limit"] == 2 << 20, error
    assert "unread input" in error["message"]
    assert big.closed_by_peer(5)
    small.send(b"}\n")  # the others keep their place and are answered
    assert small.reply(timeout=5)["result"]["pong"] is True
    late.send(b'{"jsonrpc":"2.0","id":"late","method":"ping"}\n')
    assert late.reply(timeout=5)["result"]["pong"] is True
    for r in (small, big, late):
        r.close()
    assert wait_until(lambda: "holding the most unread input" in d.log_text(), 5)


def test_out_of_descriptors_the_daemon_backs_off_and_recovers(start_daemon):
    d = start_daemon(wrap=(sys.executable, str(HELPERS / "fd_limit.py"), "40"))
    held: list[Raw] = []
    waiting = None
    try:
        for _ in range(60):
            r = Raw(d.sock, timeout=1)
            try:
                assert r.result("ping", timeout=1)["pong"] is True
                held.append(r)
            except TimeoutError:  # connected, but not taken: the daemon is out of them
                waiting = r
                break
            except BaseException:
                r.close()
                raise
        assert waiting is not None and len(held) >= 5, len(held)
        time.sleep(3)  # out of descriptors all this while, with a client waiting
        for r in held:  # those it holds are still served
            assert r.result("ping")["pong"] is True
        for r in held[:5]:
            r.close()
        del held[:5]
        # the waiting client is taken once descriptors free up: its ping is answered
        assert waiting.reply(timeout=5)["result"]["pong"] is True
        with served(d.sock) as fresh:
            assert fresh.result("ping")["pong"] is True
    finally:
        for r in held + ([waiting] if waiting else []):
            r.close()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    err = d.stderr_text()
    # one line per ten seconds at most, where it used to be thousands a second
    lines = [x for x in err.splitlines() if "out of descriptors" in x
             or "out of system resource" in x]
    assert 1 <= len(lines) <= 3, (len(lines), err[-2000:])
    assert "Traceback" not in err, err[-2000:]
