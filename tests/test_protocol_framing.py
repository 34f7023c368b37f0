"""JSON-RPC 2.0 framing on the daemon's socket: parse errors, invalid requests, unknown
methods, params by position, string ids echoed, batches whose bad members fail alone,
notifications answered by nothing, many requests pipelined on one connection."""

from __future__ import annotations

import json

import pytest
from conftest import db_rows, orch_process
from helpers.daemon_wire import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    LEASE_LOST,
    NO_METHOD,
    NOT_FOUND,
    PARSE,
    assert_error,
    claimed,
)


def test_unknown_method(raw):
    r = raw.call("fooBar", {}, id_="abc")
    assert r["id"] == "abc" and r["jsonrpc"] == "2.0"
    assert_error(r["error"], NO_METHOD)
    assert_error(raw.error("submit_task", {}), NO_METHOD)  # the Python name is not a method


def test_malformed_json(raw):
    for junk in [b"{not json", b'{"jsonrpc":"2.0","id":1,"method":"ping"', b"\xff\xfe",
                 b"nul", b'{"a":1}}']:
        raw.send(junk + b"\n")
        r = raw.reply()
        assert r["id"] is None and r["error"]["code"] == PARSE, (junk, r)
    assert raw.result("ping")["pong"] is True  # the connection is still served


def test_invalid_requests(raw):
    for value in [42, "ping", None, True, 1.5]:
        raw.send_json(value)
        r = raw.reply()
        assert r["id"] is None and r["error"]["code"] == INVALID_REQUEST, (value, r)
    # no jsonrpc member, a wrong version, a method that is not a string, a bad id
    for msg in [{"id": 7}, {"id": 7, "method": "ping"},
                {"jsonrpc": "1.0", "id": 7, "method": "ping"},
                {"jsonrpc": "2.0", "id": 7, "method": 5},
                {"jsonrpc": "2.0", "id": 7}]:
        raw.send_json(msg)
        r = raw.reply()
        assert r["id"] == 7 and r["error"]["code"] == INVALID_REQUEST, (msg, r)
    raw.send_json({"jsonrpc": "2.0", "id": [1], "method": "ping"})
    assert raw.reply()["error"]["code"] == INVALID_REQUEST
    raw.send(b"[]\n")
    r = raw.reply()
    assert r["id"] is None and r["error"]["code"] == INVALID_REQUEST
    # an invalid submit wrote nothing
    raw.send_json({"id": 8, "method": "submitTask", "params": {"queue": "inv"}})
    assert raw.reply()["error"]["code"] == INVALID_REQUEST
    assert raw.result("listTasks", {"queue": "inv"}) == []


def test_params_by_position_are_rejected(raw):
    for method, params in [("submitTask", [{"n": 1}, "posq"]), ("getTask", [1]),
                           ("ping", []), ("claimTask", ["w1"])]:
        e = raw.error(method, params)
        assert_error(e, INVALID_PARAMS, "invalid")
        assert e["data"]["field"] == "params"
    for params in ["x", 3, True]:
        assert_error(raw.error("status", params), INVALID_PARAMS)
    assert raw.result("listTasks", {"queue": "posq"}) == []


def test_string_ids_are_echoed(raw):
    r = raw.call("ping", id_="req-ü-1")
    assert r["id"] == "req-ü-1" and r["result"]["pong"] is True


def test_batch_mixed_good_and_bad(raw, daemon):
    victim = claimed(raw, "bv")
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "submitTask", "params": {"queue": "b", "key": "k1"}},
        {"jsonrpc": "2.0", "id": 2, "method": "getTask", "params": {"item_id": 777_777}},
        # a stale token: fails in the writer, beside the good writes of the same group
        {"jsonrpc": "2.0", "id": 3, "method": "releaseTask",
         "params": {"item_id": victim["id"], "token": "stale", "outcome": "succeeded"}},
        # writes its first item, then fails on the second: its savepoint undoes both
        {"jsonrpc": "2.0", "id": "four", "method": "submitMany",
         "params": {"items": [{"queue": "b", "key": "k4"},
                              {"queue": "b", "key": "k4b", "parent_id": 777_777}]}},
        {"jsonrpc": "2.0", "id": 5, "method": "noSuchMethod"},
        {"jsonrpc": "2.0", "id": 6, "method": "submitTask", "params": {"queue": "b", "key": "k6"}},
        {"jsonrpc": "2.0", "method": "submitTask", "params": {"queue": "b", "key": "note"}},
        {"jsonrpc": "2.0", "id": 8, "method": "submitTask", "params": {"queue": "b b"}},
        17,
        {"jsonrpc": "2.0", "id": 10, "method": "heartbeat",
         "params": {"item_id": victim["id"], "token": victim["token"]}},
    ]
    raw.send_json(batch)
    replies = raw.reply()
    assert isinstance(replies, list)
    assert len(replies) == len(batch) - 1  # the notification gets none
    by_id = {r["id"]: r for r in replies if r["id"] is not None}
    assert sorted(by_id, key=str) == sorted([1, 2, 3, "four", 5, 6, 8, 10], key=str)
    assert by_id[1]["result"]["created"] is True
    assert by_id[2]["error"]["code"] == NOT_FOUND
    assert by_id[3]["error"]["code"] == LEASE_LOST
    assert by_id["four"]["error"]["code"] == NOT_FOUND
    assert by_id[5]["error"]["code"] == NO_METHOD
    assert by_id[6]["result"]["created"] is True
    assert by_id[8]["error"]["code"] == INVALID_PARAMS
    assert by_id[10]["result"]["id"] == victim["id"]
    nulls = [r for r in replies if r["id"] is None]
    assert len(nulls) == 1 and nulls[0]["error"]["code"] == INVALID_REQUEST
    for r in replies:
        assert ("result" in r) != ("error" in r)
    # the failures undid nothing of the others, and left nothing of themselves
    keys = sorted(i["key"] for i in raw.result("listTasks", {"queue": "b"}))
    assert keys == ["k1", "k6", "note"]
    assert raw.result("getTask", {"item_id": victim["id"]})["status"] == "running"
    assert db_rows(daemon.db, "SELECT count(*) FROM items WHERE key IN ('k4', 'k4b')") == [(0,)]
    p = orch_process("doctor", db=daemon.db)
    assert p.returncode == 0, p.stdout + p.stderr


def test_notifications_get_no_reply(raw):
    raw.send_json({"jsonrpc": "2.0", "method": "submitTask", "params": {"queue": "nt"}})
    raw.send_json({"jsonrpc": "2.0", "method": "getTask", "params": {"item_id": 999_999}})
    raw.send_json({"jsonrpc": "2.0", "method": "nope"})
    raw.send_json([{"jsonrpc": "2.0", "method": "ping"},
                   {"jsonrpc": "2.0", "method": "submitTask", "params": {"queue": "nt"}}])
    r = raw.call("ping", id_="after")
    assert r["id"] == "after"  # the first line back answers the ping: nothing came before
    assert len(raw.result("listTasks", {"queue": "nt"})) == 2  # and the notifications ran
    with pytest.raises(TimeoutError):
        raw.readline(timeout=0.3)


def test_many_requests_pipelined_on_one_connection(raw):
    n = 200
    raw.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "submitTask",
                                  "params": {"queue": "pipe", "key": f"p{i}"}}).encode() + b"\n"
                      for i in range(n)))
    replies = [raw.reply() for _ in range(n)]
    assert sorted(r["id"] for r in replies) == list(range(n))
    assert all(r["result"]["created"] for r in replies)
    assert len(raw.result("listTasks", {"queue": "pipe", "limit": 0})) == n
