"""The daemon under bad input, bad clients, kill -9, long polls, signals and strangers
(SPEC sections 2, 4 and 8): real daemon subprocesses, real sockets, no mocks."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import apsw
import pytest
from conftest import DaemonProcess, orch_process, snapshot
from conftest import db_rows as rows
from helpers.daemon_wire import Closed, Raw, wait_until
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from orchestrator import Orchestrator, protocol
from orchestrator.errors import OutcomeUnknown

HELPERS = Path(__file__).resolve().parent / "helpers"
MAX_LINE = protocol.MAX_LINE
LIMIT, INVALID_REQUEST, INVALID_PARAMS, LEASE_LOST, NOT_FOUND = 1004, -32600, -32602, 1001, 1002


# --- helpers ----------------------------------------------------------------------------------




def serves(sock: Path, timeout: float = 5.0) -> bool:
    """A fresh connection gets a ping answered, and a write-path request too."""
    with Raw(sock, timeout=timeout) as r:
        if r.result("ping")["pong"] is not True:
            return False
        # goes through the group commit, and writes nothing (dry run)
        return r.result("staleRecovery", {"dry_run": True})["dry_run"] is True


@pytest.fixture
def start(start_daemon):
    """start_daemon, with the daemon's stderr pipe read as it goes: a daemon that logs a
    lot (tracebacks of bad requests) must not block on a full pipe nobody reads.
    ``d.stderr_text()`` is what it wrote there (all of it once it has exited)."""
    def run(*args: str, **kw) -> DaemonProcess:
        d = start_daemon(*args, **kw)
        pipe = d.proc.stderr
        chunks: list[str] = []

        def drain() -> None:
            try:
                while chunk := pipe.read(1 << 16):
                    chunks.append(chunk)
            except (ValueError, OSError):
                pass
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()

        def stderr_text() -> str:
            if d.proc.poll() is not None:
                reader.join(10)
            return "".join(chunks)
        d.stderr_text = stderr_text
        return d
    return run


def doctor_ok(db: Path) -> None:
    p = orch_process("doctor", db=db)
    assert p.returncode == 0, p.stdout + p.stderr


def seed(sock: Path) -> None:
    """A little of everything, none of it due to change by itself."""
    with Raw(sock) as r:
        for i in range(4):
            r.result("submitTask", {"queue": "seed", "key": f"s{i}", "payload": {"i": i}})
        c = r.result("claimTask", {"worker_id": "seeder", "queues": ["seed"], "ttl": 3600})
        r.result("checkpoint", {"item_id": c["id"], "token": c["token"], "data": [1]})
        c2 = r.result("claimTask", {"worker_id": "seeder", "queues": ["seed"], "ttl": 3600})
        r.result("releaseTask", {"item_id": c2["id"], "token": c2["token"],
                                 "outcome": "succeeded", "result": {"ok": 1}})
        s = r.result("startSession", {"worker_id": "agent", "ttl": 3600})
        g = r.result("createGoal", {"session_id": s["id"], "token": s["token"]})
        x = r.result("executeToolIdempotent", {"goal_id": g["id"], "token": g["token"],
                                               "tool": "t", "input": 1})
        running = [c["id"], s["id"], g["id"], x["id"]]
        assert running == RUNNING_SEED_IDS and c2["id"] == 2


RUNNING_SEED_IDS = [1, 5, 6, 7]  # what seed() leaves running; items 1 to 7 exist


# --- (a) fuzz ---------------------------------------------------------------------------------

SURROGATES = ["\ud800", "\udfff", "\udc00", "\ud83d"]
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), st.sampled_from(SURROGATES),
              st.text(max_size=3)),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70),
                                                            max_value=2**70),
                      st.floats(), any_text)
json_values = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=4)
                           | st.dictionaries(any_text, ch, max_size=4), max_leaves=16)
ids = st.one_of(st.integers(), st.text(max_size=6), any_text, st.none(), st.floats(),
                st.booleans(), st.lists(st.integers(), max_size=2))

WRITE_METHODS = ["submitTask", "submitMany", "claimTask", "heartbeat", "releaseTask",
                 "releaseAndClaim", "staleRecovery", "cancelTask", "checkpoint", "resolveTask", "startSession",
                 "resumeSession", "createGoal", "executeToolIdempotent"]
READ_METHODS = ["getTask", "listTasks", "listEvents", "status", "verify", "ping",
                "replaySession", "explainTask"]
PARAM_NAMES = ["item_id", "token", "worker_id", "queues", "queue", "ttl", "payload", "key",
               "outcome", "result", "error", "data", "limit", "since", "status", "kind",
               "session_id", "goal_id", "tool", "input", "wait", "dry_run", "items"]
assert set(WRITE_METHODS) | set(READ_METHODS) == set(protocol.METHODS)


@st.composite
def request(draw) -> dict:
    """A JSON-RPC request that cannot change anything, whatever the draw."""
    shape = draw(st.sampled_from(["unknown_method", "write_unknown_param", "write_positional",
                                  "bad_envelope", "read", "foreign_token"]))
    params: object
    if shape == "unknown_method":
        method = draw(any_text.filter(lambda m: m not in protocol.METHODS))
        params = draw(json_values)
    elif shape == "write_unknown_param":
        # every write method checks for unknown parameters before anything else
        method = draw(st.sampled_from(WRITE_METHODS))
        params = draw(st.dictionaries(st.sampled_from(PARAM_NAMES), json_values, max_size=4))
        params["zz_" + draw(st.text(max_size=5))] = draw(json_values)
    elif shape == "write_positional":
        method = draw(st.sampled_from(WRITE_METHODS))
        params = draw(st.one_of(st.lists(json_values, max_size=3), json_leaf.filter(
            lambda v: v is not None)))
    elif shape == "bad_envelope":
        method = draw(st.one_of(st.sampled_from(WRITE_METHODS), json_values))
        params = {"queue": "fuzz", "worker_id": "fuzz", "queues": ["seed"]}
        msg = {"method": method, "params": params, "id": draw(ids)}
        version = draw(st.one_of(st.just(None), json_values.filter(lambda v: v != "2.0")))
        if version is not None:
            msg["jsonrpc"] = version
        return msg
    elif shape == "read":
        method = draw(st.sampled_from(READ_METHODS))
        params = draw(st.one_of(st.dictionaries(st.sampled_from(PARAM_NAMES), json_values,
                                                max_size=4), json_values))
    else:  # a holder write with a token no claim ever had
        method = draw(st.sampled_from(["releaseTask", "heartbeat", "checkpoint", "verify",
                                       "createGoal", "executeToolIdempotent"]))
        target = draw(st.one_of(st.sampled_from(RUNNING_SEED_IDS), st.integers(1, 9)))
        token = draw(st.one_of(any_text.filter(lambda t: len(t) > 0),
                               st.text(min_size=1, max_size=30)))
        params = {"releaseTask": {"item_id": target, "token": token,
                                  "outcome": draw(st.sampled_from(["succeeded", "failed",
                                                                   "requeue", "cancelled"])),
                                  "error": draw(st.one_of(st.none(), any_text))},
                  "heartbeat": {"item_id": target, "token": token},
                  "checkpoint": {"item_id": target, "token": token, "data": draw(json_values)},
                  "verify": {"item_id": target, "token": token},
                  "createGoal": {"session_id": target, "token": token,
                                 "key": draw(st.one_of(st.none(), any_text))},
                  "executeToolIdempotent": {"goal_id": target, "token": token,
                                            "tool": draw(any_text), "input": draw(json_values)},
                  }[method]
        params = {k: v for k, v in params.items() if v is not None}
    msg = {"jsonrpc": "2.0", "method": method, "params": params}
    if draw(st.integers(0, 4)):  # mostly with an id; sometimes a notification
        msg["id"] = draw(ids)
    return msg


def encode(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"  # ensure_ascii: lone surrogates as \udXXX


lines = st.one_of(
    st.binary(max_size=300).map(lambda b: b + b"\n"),
    json_values.map(encode),
    request().map(encode),
    st.lists(st.one_of(request(), json_values), min_size=1, max_size=5).map(encode),
    st.just(b"\n"), st.just(b"   \t \n"),
)


def test_fuzz_never_changes_data_and_never_takes_the_daemon_down(start):
    d = start()
    seed(d.sock)
    before = snapshot(d.db)
    probe_ids = itertools.count()
    kept: dict[str, Raw] = {}

    def connection(fresh: bool) -> Raw:
        if fresh or "c" not in kept:
            if "c" in kept:
                kept.pop("c").close()
            kept["c"] = Raw(d.sock, timeout=3)
        return kept["c"]

    @settings(max_examples=150, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # a broken daemon stays broken
              suppress_health_check=list(HealthCheck))
    @given(chunks=st.lists(lines, min_size=1, max_size=6), fresh=st.booleans())
    @example(chunks=[b"\x00\xff{\n", encode({"jsonrpc": "2.0", "id": 1, "method": "nope"}),
                     encode({"jsonrpc": "2.0", "id": 2, "method": "heartbeat",
                             "params": {"item_id": RUNNING_SEED_IDS[1], "token": "\ud800"}})],
             fresh=False)
    def run(chunks: list[bytes], fresh: bool) -> None:
        r = connection(fresh)
        probe = f"probe-{next(probe_ids)}"
        try:
            r.send(b"".join(chunks))
            r.send_json({"jsonrpc": "2.0", "id": probe, "method": "ping"})
            while True:  # read up to the probe's reply; each before it is well formed
                reply = json.loads(r.readline(timeout=3))
                for one in reply if isinstance(reply, list) else [reply]:
                    assert one["jsonrpc"] == "2.0" and ("result" in one) != ("error" in one)
                if isinstance(reply, dict) and reply.get("id") == probe:
                    assert reply["result"]["pong"] is True
                    break
        except (Closed, BrokenPipeError, ConnectionResetError):
            kept.pop("c").close()  # dropped (allowed): the next example reconnects
        except TimeoutError:
            raise AssertionError("no reply to a ping within 3 s after these lines: the "
                                 "daemon stopped serving this connection") from None
        assert serves(d.sock, timeout=3), "the daemon stopped serving"
        assert d.proc.poll() is None

    try:
        run()
    except BaseException:
        d.kill()  # it may be wedged: do not wait for a graceful stop
        raise
    finally:
        for r in kept.values():
            r.close()
    assert serves(d.sock)
    after = snapshot(d.db)
    for table in before:
        assert after[table] == before[table], table
    doctor_ok(d.db)


@pytest.mark.parametrize("method,params,codes", [
    ("submitTask", {"queue": "lone", "key": "k\ud800"}, {INVALID_PARAMS}),
    ("submitTask", {"queue": "lone", "payload": {"text": "\udfff"}}, {INVALID_PARAMS}),
    ("startSession", {"worker_id": "w", "key": "\ud800"}, {INVALID_PARAMS}),
    ("claimTask", {"worker_id": "w\ud800", "queues": ["lone"]}, {INVALID_PARAMS}),
    # item 1 is running: the token is compared with its claim's
    ("releaseTask", {"item_id": 1, "token": "\ud800", "outcome": "succeeded"},
     {INVALID_PARAMS, LEASE_LOST}),
    ("verify", {"item_id": 1, "token": "x\udc00"}, {INVALID_PARAMS, LEASE_LOST}),
])
def test_lone_surrogates_are_refused_and_harm_nothing(start, method, params, codes):
    """JSON's \\udXXX escapes can name a lone surrogate, which is not text (it cannot be
    stored as UTF-8): invalid input, answered with an error; every other client is
    served as before."""
    d = start()
    healthy = False
    try:
        with Raw(d.sock, timeout=5) as r:
            r.result("submitTask", {"queue": "lone"})
            assert r.result("claimTask", {"worker_id": "w", "queues": ["lone"]})["id"] == 1
            r.result("submitTask", {"queue": "lone"})  # claimable: a claim would take it
            before = snapshot(d.db)
            try:
                reply = r.call(method, params, timeout=2)
            except (TimeoutError, Closed) as exc:
                reply = {"no reply": repr(exc)}
        try:
            healthy = serves(d.sock, timeout=2)
        except (TimeoutError, Closed):
            healthy = False
        assert "error" in reply and reply["error"]["code"] in codes, reply
        assert healthy, "after that request the daemon no longer carries out writes"
        assert snapshot(d.db) == before
    finally:
        if not healthy:
            d.kill()  # wedged: a graceful stop would wait for requests that never end


# --- (b) oversized lines and deep JSON --------------------------------------------------------


def test_line_over_4_mib_is_refused_while_others_are_served(start):
    d = start()
    big = Raw(d.sock, timeout=10)
    other = Raw(d.sock, timeout=5)
    sent: list[BaseException] = []

    def flood():
        try:
            big.send(b'{"jsonrpc":"2.0","id":1,"method":"submitTask","params":{"payload":"'
                     + b"x" * (MAX_LINE + 10) + b'"}}\n')
        except OSError as exc:  # the daemon may hang up before the line ends
            sent.append(exc)

    t = threading.Thread(target=flood)
    t.start()
    for i in range(20):  # served all along
        assert other.result("submitTask", {"queue": "side", "key": f"k{i}"})["created"]
    t.join(20)
    assert not t.is_alive()
    try:
        reply = big.reply(timeout=10)
        assert reply["error"]["code"] == LIMIT, reply
        assert reply["error"]["data"]["limit"] == MAX_LINE
    except Closed:
        pass  # dropped without a word: allowed
    assert big.closed_by_peer(5)
    big.close()
    assert other.result("ping")["pong"] is True
    other.close()
    assert rows(d.db, "SELECT count(*) FROM items WHERE queue != 'side'") == [(0,)]
    assert serves(d.sock)


def test_line_limit_is_exactly_4_mib(start):
    d = start()
    head, tail = b'{"jsonrpc":"2.0","id":"edge","method":"ping"', b"}"
    exact = head + b" " * (MAX_LINE - len(head) - len(tail)) + tail
    assert len(exact) == MAX_LINE
    with Raw(d.sock, timeout=10) as r:
        r.send(exact + b"\n")
        assert r.reply()["result"]["pong"] is True  # whitespace is JSON: a 4 MiB ping
        r.send(exact[:-1] + b" }\n")  # one byte over
        try:
            reply = r.reply()
            assert reply["error"]["code"] == LIMIT
        except Closed:
            pass
    assert serves(d.sock)


def test_deep_json_message_gets_a_limit_error(start):
    d = start()
    with Raw(d.sock) as r:
        for depth in (100, 100_000):
            r.send(b"[" * depth + b"]" * depth + b"\n")
            reply = r.reply()
            assert isinstance(reply, dict), (depth, str(reply)[:300])  # not run as a batch
            assert reply["error"]["code"] == LIMIT, (depth, reply)
        r.send(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
               + b"[" * 100 + b"]" * 100 + b"}}\n")
        assert r.reply()["error"]["code"] == LIMIT
    assert serves(d.sock)


def test_deep_values_in_params_are_limited_to_64_levels(start):
    def nested(n):
        return json.loads("[" * n + "]" * n)
    d = start()
    with Raw(d.sock) as r:
        e = r.error("submitTask", {"queue": "deep", "payload": nested(100)})
        assert e["code"] == LIMIT
        e = r.error("submitTask", {"queue": "deep", "payload": nested(65)})
        assert e["code"] == LIMIT and e["data"]["field"] == "payload"
        e = r.error("submitTask", {"queue": "deep", "payload": {"a": nested(64)}})
        assert e["code"] == LIMIT
        assert r.result("submitTask", {"queue": "deep", "payload": nested(64)})["created"]
        assert len(r.result("listTasks", {"queue": "deep"})) == 1
    assert serves(d.sock)


# --- (c) stalled, vanished and idle clients ----------------------------------------------------


def test_client_stalled_mid_line_is_dropped_others_served(start):
    d = start("--line-timeout", "0.5")
    stalled = Raw(d.sock)
    stalled.send(b'{"jsonrpc": "2.0", "id": 1, "method": "submitTask", "params": {"qu')
    t0 = time.monotonic()
    with Raw(d.sock) as other:
        assert other.result("ping")["pong"] is True
        assert time.monotonic() - t0 < 0.4  # served while the other stalls
        for i in range(5):
            assert other.result("submitTask", {"queue": "ok", "key": f"o{i}"})["created"]
        assert stalled.closed_by_peer(5)
        waited = time.monotonic() - t0
        assert 0.45 <= waited < 3, waited
        assert other.result("ping")["pong"] is True
    stalled.close()
    # an idle connection (nothing half-sent) is not dropped
    with Raw(d.sock) as idle:
        assert not idle.closed_by_peer(1.5)
        assert idle.result("ping")["pong"] is True
    assert rows(d.db, "SELECT count(*) FROM items WHERE queue != 'ok'") == [(0,)]


def test_clients_vanishing_mid_call_do_not_hurt(start):
    d = start()
    for i in range(30):
        with Raw(d.sock) as r:
            r.send_json({"jsonrpc": "2.0", "id": i, "method": "submitTask",
                         "params": {"queue": "gone", "key": f"g{i}"}})
            if i % 3 == 0:  # a batch, and a parked claim, abandoned too
                r.send_json([{"jsonrpc": "2.0", "id": n, "method": "listTasks",
                              "params": {"limit": 0}} for n in range(20)])
                r.send_json({"jsonrpc": "2.0", "id": "p", "method": "claimTask",
                             "params": {"worker_id": "ghost", "queues": ["nothing"],
                                        "wait": 1}})
        # closed at once, without reading anything
    with Raw(d.sock) as r:
        assert r.result("ping")["pong"] is True
        assert r.result("submitTask", {"queue": "live"})["created"]
    keys = [k for (k,) in rows(d.db, "SELECT key FROM items WHERE queue='gone'")]
    assert len(keys) == len(set(keys)) <= 30  # carried out or not, never twice
    assert serves(d.sock)
    doctor_ok(d.db)


def test_vanished_long_poller_does_not_swallow_an_item(start):
    """A parked claim whose client has gone must not take the next item: nobody would
    ever hold it, and it would sit running until its lease ran out, an attempt burnt."""
    d = start()
    with Raw(d.sock) as ghost:
        ghost.send_json({"jsonrpc": "2.0", "id": 1, "method": "claimTask",
                         "params": {"worker_id": "ghost", "queues": ["gq"], "wait": 20,
                                    "ttl": 60}})
        time.sleep(0.2)  # parked
    time.sleep(0.2)  # and gone
    with Raw(d.sock) as live, Raw(d.sock) as feeder:
        live.send_json({"jsonrpc": "2.0", "id": 2, "method": "claimTask",
                        "params": {"worker_id": "live", "queues": ["gq"], "wait": 2,
                                   "ttl": 60}})
        time.sleep(0.2)
        item = feeder.result("submitTask", {"queue": "gq"})
        got = live.reply(timeout=10)["result"]
    assert got is not None, "the vanished client's parked claim took the item"
    assert got["id"] == item["id"] and got["attempt"] == 1


def test_300_idle_connections_while_another_client_works(start):
    d = start()
    idle = []
    try:
        for _ in range(300):
            idle.append(Raw(d.sock, timeout=5))
        with Raw(d.sock) as w:
            for i in range(20):
                t = time.monotonic()
                w.result("submitTask", {"queue": "busy", "key": f"b{i}"})
                c = w.result("claimTask", {"worker_id": "busy", "queues": ["busy"]})
                w.result("releaseTask", {"item_id": c["id"], "token": c["token"],
                                         "outcome": "succeeded"})
                assert time.monotonic() - t < 1.0
        for r in idle[::50]:  # the idle ones are still served
            assert r.result("ping")["pong"] is True
    finally:
        for r in idle:
            r.close()
    assert rows(d.db, "SELECT status, count(*) FROM items GROUP BY status") == \
        [("succeeded", 20)]
    assert serves(d.sock)


def test_a_file_locked_by_another_process_does_not_stop_the_daemon(start):
    """The group commit runs in the loop's thread, but never waits there for the lock."""
    d = start()
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


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_its_answers_is_not_buffered_for(start):
    d = start()
    with Raw(d.sock) as w:
        w.result("submitMany", {"items": [{"payload": "x" * 200_000} for _ in range(20)]})
    before = _rss_mb(d.proc.pid)
    with Raw(d.sock) as greedy:
        request = protocol.encode({"jsonrpc": "2.0", "id": 1, "method": "listTasks"})
        greedy.sock.setblocking(False)
        sent, data, t = 0, request * 400, time.monotonic()  # 400 answers of 4 MB each
        while sent < len(data) and time.monotonic() - t < 10:
            try:
                sent += greedy.sock.send(data[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(2)
        assert _rss_mb(d.proc.pid) - before < 150  # not 400 x 4 MB of answers held
        assert serves(d.sock)  # and everyone else is served meanwhile


def test_blank_lines_sent_ahead_do_not_wedge_a_connection(start):
    d = start()
    with Raw(d.sock, timeout=30) as r:
        r.send_json({"jsonrpc": "2.0", "id": 1, "method": "claimTask",
                     "params": {"worker_id": "w", "queues": ["none"], "wait": 1}})
        r.sock.setblocking(False)
        blank, sent, t = b"\n" * (9 << 20), 0, time.monotonic()  # past the read pause
        while sent < len(blank) and time.monotonic() - t < 10:
            try:
                sent += r.sock.send(blank[sent:sent + (1 << 20)])
            except BlockingIOError:
                time.sleep(0.01)
        r.sock.setblocking(True)
        assert r.reply(timeout=10) == {"jsonrpc": "2.0", "id": 1, "result": None}
        assert r.result("ping", timeout=10)["pong"] is True


# --- (d) kill -9 under load -------------------------------------------------------------------


def test_kill_9_under_load_keeps_every_acknowledged_submit(start, short_tmp):
    d = start()
    outs = [short_tmp / f"load{i}.txt" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, str(HELPERS / "daemon_load_client.py"),
                               str(d.sock), f"c{i}", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, out in enumerate(outs)]
    try:
        def acked(out: Path) -> int:
            return out.read_text().count("ack ") if out.exists() else 0
        assert wait_until(lambda: all(acked(o) >= 30 for o in outs), 30)
        d.kill()
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert d.sock.exists()  # left behind by the dead daemon
    acks: dict[str, int] = {}
    fences: list[int] = []
    unknown: set[str] = set()
    for out in outs:
        for line in out.read_text().splitlines():
            word, *rest = line.split()
            if word == "ack":
                acks[rest[0]] = int(rest[1])
            elif word == "fence":
                fences.append(int(rest[0]))
            else:
                unknown.add(rest[0])
    assert len(acks) >= 120 and fences
    assert len(fences) == len(set(fences))  # no fence handed out twice

    d2 = start(db=d.db, sock=d.sock)  # the stale socket is no obstacle
    keys = Counter(k for (k,) in rows(d.db, "SELECT key FROM items WHERE queue='load'"))
    by_key = dict(rows(d.db, "SELECT key, id FROM items WHERE queue='load'"))
    for key, item_id in acks.items():
        assert keys[key] == 1, key
        assert by_key[key] == item_id
    assert set(keys) <= set(acks) | unknown  # nothing appeared that nobody asked for
    doctor_ok(d.db)
    max_fence_in_file = rows(d.db, "SELECT max(fence) FROM items")[0][0]
    with d2.client() as c:
        c.submit_task({"after": "restart"}, queue="after")
        claim = c.claim_task("after", ["after"])
    assert claim["fence"] > max(fences) and claim["fence"] > max_fence_in_file
    assert serves(d2.sock)


def test_daemon_killed_mid_call(start):
    """The client cannot know whether a call whose connection died ran: OutcomeUnknown,
    and exit 7 from the CLI (daemon gone mid-call)."""
    d = start()
    seen: list[BaseException] = []

    def parked():
        with d.client(timeout=5) as c:
            try:
                c.claim_task("w", ["void"], wait=20)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                seen.append(exc)

    t = threading.Thread(target=parked)
    t.start()
    cli = subprocess.Popen([sys.executable, "-m", "orchestrator", "--socket", str(d.sock),
                            "--db", str(d.db), "claim", "--worker", "cli", "--queue", "void",
                            "--wait", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    time.sleep(1.0)  # both parked in the daemon
    d.kill()
    t.join(10)
    out, err = cli.communicate(timeout=15)
    assert seen and isinstance(seen[0], OutcomeUnknown), seen
    assert cli.returncode == 7, (out, err)
    assert err.startswith("orch: error:")


# --- (e) long-poll claims ----------------------------------------------------------------------


def claim_in_thread(sock: Path, params: dict, results: list) -> threading.Thread:
    def run():
        with Raw(sock, timeout=60) as r:
            t = time.monotonic()
            reply = r.call("claimTask", params)
            results.append((time.monotonic(), time.monotonic() - t, reply))
    th = threading.Thread(target=run)
    th.start()
    return th


def test_parked_claim_returns_promptly_on_submit(start):
    d = start()
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["lp"], "wait": 10}, got)
    time.sleep(0.4)
    assert not got  # parked, not answered
    with Raw(d.sock) as r:
        submitted_at = time.monotonic()
        item = r.result("submitTask", {"queue": "lp"})
    th.join(5)
    assert got, "the parked claim did not return"
    returned_at, took, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert returned_at - submitted_at < 3 and took < 3.5


def test_release_and_claim_parks_only_its_claim(start):
    d = start()
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "rp"})
        c = r.result("claimTask", {"worker_id": "w", "queues": ["rp"]})
    got: list = []

    def run():
        with Raw(d.sock, timeout=60) as r:
            got.append(r.call("releaseAndClaim", {"item_id": c["id"], "token": c["token"],
                                                  "outcome": "succeeded", "wait": 10}))
    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.4)
    assert not got  # parked
    assert rows(d.db, "SELECT status FROM items WHERE id = ?", (c["id"],)) == [("succeeded",)]
    with Raw(d.sock) as r:
        item = r.result("submitTask", {"queue": "rp"})
    th.join(5)
    assert got and got[0]["result"]["next"]["id"] == item["id"]
    assert got[0]["result"]["released"]["id"] == c["id"]


def test_five_parked_workers_one_item(start):
    d = start()
    got: list = []
    threads = [claim_in_thread(d.sock, {"worker_id": f"w{i}", "queues": ["five"],
                                        "wait": 1.5}, got) for i in range(5)]
    time.sleep(0.3)
    with Raw(d.sock) as r:
        item = r.result("submitTask", {"queue": "five"})
    for th in threads:
        th.join(10)
    assert len(got) == 5
    winners = [reply["result"] for _, _, reply in got if reply["result"] is not None]
    assert len(winners) == 1 and winners[0]["id"] == item["id"]
    losers = [took for _, took, reply in got if reply["result"] is None]
    assert len(losers) == 4
    assert all(1.3 <= took < 4 for took in losers), losers  # when their own wait ended
    assert rows(d.db, "SELECT attempts FROM items") == [(1,)]


def test_delayed_item_wakes_a_parked_claim_when_due(start):
    d = start()
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["later"], "wait": 4}, got)
    time.sleep(0.3)
    with Raw(d.sock) as r:
        submitted_at = time.monotonic()
        item = r.result("submitTask", {"queue": "later", "delay": 1})
    th.join(10)
    returned_at, _, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert 0.9 <= returned_at - submitted_at < 2.5, returned_at - submitted_at
    # and the other way round: the delayed item exists first, then the claim parks
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "later2", "delay": 1})
        t = time.monotonic()
        c = r.result("claimTask", {"worker_id": "w", "queues": ["later2"], "wait": 8})
        assert c is not None and 0.85 <= time.monotonic() - t < 2.5


def test_parked_claim_wakes_on_recovery_and_on_embedded_writes(start):
    d = start()
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "rq"})
        dead = r.result("claimTask", {"worker_id": "dies", "queues": ["rq"], "ttl": 0.2})
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "heir", "queues": ["rq"], "wait": 8}, got)
    th.join(10)
    _, took, reply = got[0]
    assert reply["result"]["id"] == dead["id"] and reply["result"]["attempt"] == 2
    assert took < 4, took  # lease 0.2 s, a recovery pass, backoff <= 1 s
    # a submit by another process, straight into the file (embedded mode)
    got.clear()
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["emb"], "wait": 8}, got)
    time.sleep(0.3)
    with Orchestrator(d.db) as o:
        submitted_at = time.monotonic()
        item = o.submit_task({"from": "embedded"}, queue="emb")
    th.join(10)
    returned_at, _, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert returned_at - submitted_at < 3


# --- (f) signals, the socket, permissions ------------------------------------------------------


def wal_is_checkpointed(db: Path) -> bool:
    wal = db.with_name(db.name + "-wal")
    return not wal.exists() or wal.stat().st_size == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_with_requests_in_flight(start, sig):
    d = start()
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
    keys = {k for (k,) in rows(d.db, "SELECT key FROM items WHERE queue='spam'")}
    assert set(acked) <= keys
    for e in turned_away:
        assert e["code"] == 1005 and e["data"]["delivered"] is False, e
        assert e["key"] not in keys
    doctor_ok(d.db)


def test_second_daemon_on_the_same_socket_refuses(start, short_tmp):
    d = start()
    other_db = short_tmp / "other" / "orch.db"
    p = orch_process("--socket", str(d.sock), "daemon", "--log-file",
                     str(short_tmp / "second.log"), db=other_db, timeout=30)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("orch: error:") and str(d.sock) in err and "already" in err, err
    assert d.sock.exists() and d.proc.poll() is None  # the first one is untouched
    assert serves(d.sock)


def test_stale_socket_of_a_killed_daemon_is_removed(start):
    d = start()
    with d.client() as c:
        item = c.submit_task({"before": "kill"})
    d.kill()
    assert d.sock.exists()
    with pytest.raises(ConnectionRefusedError), Raw(d.sock):
        pass
    d2 = start(db=d.db, sock=d.sock)
    with d2.client() as c:
        assert c.get_task(item["id"])["payload"] == {"before": "kill"}
    assert serves(d2.sock)
    assert d2.stop() == 0 and not d2.sock.exists()


def test_file_modes(short_tmp):
    db = short_tmp / "data" / "sub" / "orch.db"
    sock = short_tmp / "run" / "sub" / "orch.sock"
    old = os.umask(0)  # the daemon must not depend on a careful umask
    try:
        d = DaemonProcess(db, sock, "--recover-every", "0.5").start()
    finally:
        os.umask(old)
    try:
        with d.client() as c:
            c.submit_task({"x": 1})

        def mode(p: Path) -> int:
            return stat.S_IMODE(p.lstat().st_mode)
        assert stat.S_ISSOCK(sock.lstat().st_mode) and mode(sock) == 0o600
        for directory in (sock.parent, sock.parent.parent, db.parent, db.parent.parent):
            assert mode(directory) == 0o700, directory
        assert mode(db) == 0o600
        for suffix in ("-wal", "-shm"):
            f = db.with_name(db.name + suffix)
            if f.exists():
                assert mode(f) == 0o600, f
        assert d.log.parent == sock.parent and mode(d.log) == 0o600
    finally:
        assert d.stop() == 0


def test_log_files_are_private_rotated_ones_too(short_tmp):
    run = short_tmp / "run"
    run.mkdir(mode=0o700)
    log = run / "daemon.log"  # where DaemonProcess logs
    log.write_text("left by an older orch\n")
    os.chmod(log, 0o644)
    os.truncate(log, 10 << 20)  # full: the daemon's first line rotates it
    old = os.umask(0)
    try:
        d = DaemonProcess(short_tmp / "orch.db", run / "orch.sock").start()
    finally:
        os.umask(old)
    try:
        assert wait_until(lambda: len(list(run.glob("daemon*.log"))) == 2, 5)
        for f in run.glob("daemon*.log"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert "orch daemon serving" in log.read_text()  # the new file
    finally:
        assert d.stop() == 0


# --- (g) another uid --------------------------------------------------------------------------

STRANGER = r"""
import json, socket, sys
path, queue = sys.argv[1], sys.argv[2]
out = {"connected": False, "closed": False, "timeout": False, "lines": []}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
    out["connected"] = True
    try:
        s.sendall(('{"jsonrpc":"2.0","id":1,"method":"submitTask","params":{"queue":"%s"}}\n'
                   '{"jsonrpc":"2.0","id":2,"method":"ping"}\n' % queue).encode())
    except OSError as exc:
        out["send_error"] = repr(exc)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            out["timeout"] = True
            break
        except OSError as exc:
            out["closed"] = True
            out["recv_error"] = repr(exc)
            break
        if not chunk:
            out["closed"] = True
            break
        buf += chunk
        if buf.count(b"\n") >= 2:
            break
    out["lines"] = [json.loads(x) for x in buf.splitlines() if x.strip()]
except OSError as exc:
    out["connect_error"] = repr(exc)
finally:
    s.close()
print(json.dumps(out))
"""


def _python_for(user: str) -> str | None:
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not exe:
            continue
        try:
            p = subprocess.run([exe, "-I", "-c", "pass"], user=user, capture_output=True,
                               timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if p.returncode == 0:
            return exe
    return None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")
def test_another_uid_is_refused(start, short_tmp):
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no Python that the user nobody may run")
    os.chmod(short_tmp, 0o711)
    public = short_tmp / "pub"
    public.mkdir()
    os.chmod(public, 0o777)
    d = start(sock=public / "orch.sock")
    os.chmod(d.sock, 0o666)  # only the peer-credential check stands in the way now

    def stranger(queue: str, user: str | None) -> dict:
        p = subprocess.run([python if user else sys.executable, "-I", "-c", STRANGER,
                            str(d.sock), queue], user=user, capture_output=True, text=True,
                           timeout=30, check=False)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    mine = stranger("owner", None)  # the same script as the owner: served
    assert [line.get("id") for line in mine["lines"]] == [1, 2]
    assert all("result" in line for line in mine["lines"]), mine
    before = snapshot(d.db)

    theirs = stranger("intruder", "nobody")
    assert theirs["connected"] is True, theirs  # the file modes let it in...
    assert theirs["closed"] is True and not theirs["timeout"], theirs  # ...the daemon did not
    assert all("result" not in line for line in theirs["lines"]), theirs
    for line in theirs["lines"]:
        assert line["error"]["code"] == INVALID_REQUEST
        assert line["error"]["data"]["reason"] == "forbidden"
    assert snapshot(d.db) == before
    assert rows(d.db, "SELECT count(*) FROM items WHERE queue='intruder'") == [(0,)]
    assert serves(d.sock)


# --- (h) what one client may hold: a line's time, idleness, connections, input ------------------


def log_text(d: DaemonProcess) -> str:
    return d.log.read_text() if d.log.exists() else ""


def served(sock: Path, timeout: float = 5.0) -> Raw:
    """A connection the daemon has taken and answered once."""
    r = Raw(sock, timeout=timeout)
    try:
        assert r.result("ping")["pong"] is True
    except BaseException:
        r.close()
        raise
    return r


def test_a_line_trickled_in_is_dropped_at_its_deadline(start):
    """Progress does not buy time: a line must end within the line timeout of its first
    byte, however steadily the rest trickles in."""
    d = start("--line-timeout", "1")
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
    assert rows(d.db, "SELECT count(*) FROM items WHERE queue != 'after'") == [(0,)]
    assert wait_until(lambda: "whose line was not complete 1 s after its first byte"
                      in log_text(d), 5), log_text(d)


def test_idle_connections_are_closed_but_parked_claims_are_not(start):
    d = start("--idle-timeout", "1")
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
    assert wait_until(lambda: "idle connection(s): no request for 1 s" in log_text(d), 5)


def test_connections_over_the_cap_get_an_error_line_and_the_cli_uses_the_file(start):
    d = start("--max-connections", "4")
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
    assert rows(d.db, "SELECT id FROM items WHERE queue='cli'") == [(p.stdout and
                                                                    json.loads(p.stdout)["id"],)]
    held.pop().close()  # room again
    assert wait_until(lambda: _try_served(d.sock, held), 5)
    for r in held:
        r.close()
    assert wait_until(lambda: "connection(s): 4 open, the most allowed" in log_text(d), 5)


def _try_served(sock: Path, into: list) -> bool:
    try:
        into.append(served(sock, timeout=2))
        return True
    except (Closed, AssertionError, KeyError, OSError):
        return False


def test_input_buffered_past_the_cap_drops_the_client_holding_most(start):
    d = start("--max-buffered-mib", "2")
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
    assert wait_until(lambda: "holding the most unread input" in log_text(d), 5)


def test_out_of_descriptors_the_daemon_backs_off_and_recovers(start):
    d = start(wrap=(sys.executable, str(HELPERS / "fd_limit.py"), "40"))
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


def test_line_over_4_mib_closes_the_connection_cleanly(start):
    """The limit error, then a clean close, also when it is found as the client starts
    taking its answers again (that path used to log AttributeError tracebacks)."""
    d = start()
    with Raw(d.sock) as w:  # answers of 4 MB each, more than a socket holds
        w.result("submitMany", {"items": [{"payload": "x" * 200_000} for _ in range(20)]})
    for _ in range(3):
        with Raw(d.sock, timeout=10) as r:
            data = protocol.encode({"jsonrpc": "2.0", "id": 1, "method": "listTasks",
                                    "params": {"limit": 0}}) * 3 + b"x" * (MAX_LINE + 1024)

            def send(r=r, data=data) -> None:
                try:
                    r.send(data)
                except OSError:
                    pass  # hung up on before the end: expected
            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(0.5)  # the answers back up: the daemon stops reading
            for _ in range(3):
                assert len(r.reply()["result"]) == 20
            error = r.reply()["error"]
            assert error["code"] == LIMIT and error["data"]["limit"] == MAX_LINE
            assert r.closed_by_peer(5)
            sender.join(10)
    assert serves(d.sock)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    for text in (d.stderr_text(), log_text(d)):
        assert "Traceback" not in text and "AttributeError" not in text, text[-3000:]


# --- (i) the CLI when the daemon stops or restarts under it -------------------------------------


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
    found = rows(db, "SELECT id FROM items")
    if code == 0:
        assert found == [(json.loads(p.stdout)["id"],)]
    else:
        assert p.stderr.startswith("orch: error:") and "may or may not" in p.stderr
        assert found == []


def test_cli_uses_the_file_when_the_socket_refuses(short_tmp):
    import socket

    db, sock = short_tmp / "orch.db", short_tmp / "orch.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # a socket file nobody listens on, as a killed daemon leaves
    stale.close()
    p = orch_process("--socket", str(sock), "--json", "submit", "--payload", '"x"', db=db)
    assert p.returncode == 0, p.stderr
    assert rows(db, "SELECT id FROM items") == [(json.loads(p.stdout)["id"],)]


def test_cli_submits_while_the_daemon_restarts_all_land_exactly_once(start):
    d = start()
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
            d = start(db=db, sock=sock)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [(tag, p.returncode, p.stderr) for tag, p in results if p.returncode != 0]
    assert not failed, failed
    assert len(results) >= 10
    stored = dict(rows(db, "SELECT json_extract(payload, '$'), id FROM items "
                           "WHERE queue = 'rs'"))
    assert len(stored) == rows(db, "SELECT count(*) FROM items WHERE queue='rs'")[0][0]
    assert stored == {tag: json.loads(p.stdout)["id"] for tag, p in results}
    doctor_ok(db)
