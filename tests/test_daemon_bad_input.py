"""Bad input on the daemon's socket never takes it down and never changes data: fuzzed
lines and requests, lone surrogates, lines over 4 MiB (refused, the connection closed
cleanly, others served), JSON deeper than 64 levels; the line limit is exactly 4 MiB."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import db_rows, doctor_ok, snapshot
from helpers.daemon_wire import INVALID_PARAMS, LEASE_LOST, LIMIT, Closed, Raw, serves
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from orchestrator import protocol

MAX_LINE = protocol.MAX_LINE


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
                 "releaseAndClaim", "staleRecovery", "cancelTask", "checkpoint", "resolveTask",
                 "retryTask", "startSession", "resumeSession", "createGoal",
                 "executeToolIdempotent"]


READ_METHODS = ["getTask", "listTasks", "listEvents", "status", "verify", "ping",
                "replaySession", "explainTask", "overview"]


PARAM_NAMES = ["item_id", "token", "worker_id", "queues", "queue", "ttl", "payload", "key",
               "outcome", "result", "error", "data", "limit", "since", "status", "kind",
               "session_id", "goal_id", "tool", "input", "wait", "dry_run", "items", "by",
               "counts"]
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


def test_fuzz_never_changes_data_and_never_takes_the_daemon_down(start_daemon):
    d = start_daemon()
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
def test_lone_surrogates_are_refused_and_harm_nothing(start_daemon, method, params, codes):
    """JSON's \\udXXX escapes can name a lone surrogate, which is not text (it cannot be
    stored as UTF-8): invalid input, answered with an error; every other client is
    served as before."""
    d = start_daemon()
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


def test_line_over_4_mib_is_refused_while_others_are_served(start_daemon):
    d = start_daemon()
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
    assert db_rows(d.db, "SELECT count(*) FROM items WHERE queue != 'side'") == [(0,)]
    assert serves(d.sock)


def test_line_limit_is_exactly_4_mib(start_daemon):
    d = start_daemon()
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


def test_line_over_4_mib_closes_the_connection_cleanly(start_daemon):
    """The limit error, then a clean close, also when it is found as the client starts
    taking its answers again (that path used to log AttributeError tracebacks)."""
    d = start_daemon()
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
    for text in (d.stderr_text(), d.log_text()):
        assert "Traceback" not in text and "AttributeError" not in text, text[-3000:]


def test_deep_json_message_gets_a_limit_error(start_daemon):
    d = start_daemon()
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


def test_deep_values_in_params_are_limited_to_64_levels(start_daemon):
    def nested(n):
        return json.loads("[" * n + "]" * n)
    d = start_daemon()
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
