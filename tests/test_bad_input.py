"""Bad input, through the CLI and through the Python API (SPEC section 10).

Every case: the documented exit code / exception, a message naming the field (and the
limit, for limits), and a database left exactly as it was.
"""

from __future__ import annotations

import json

import pytest
from conftest import snapshot

from orchestrator import Conflict, InvalidInput, LimitExceeded, NotFound

MiB = 1 << 20




def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_value(depth: int) -> list:
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def string_text(n_bytes: int) -> str:
    """JSON text of a string that is exactly ``n_bytes`` long, quotes included."""
    return json.dumps("x" * (n_bytes - 2))


class World:
    """A pending item, a running item (with its token) and a succeeded item."""

    def __init__(self, orch):
        self.pending = orch.submit_task({"p": 1}, queue="q")["id"]
        self.running = orch.submit_task({"r": 1}, queue="q")["id"]
        self.done = orch.submit_task({"d": 1}, queue="q")["id"]
        c = orch.claim_task("w0", item_id=self.done)
        orch.release_task(self.done, c["token"], "succeeded", result="ok")
        c = orch.claim_task("w1", item_id=self.running, ttl=3600)
        self.token = c["token"]
        self.fence = c["fence"]

    def fmt(self, args: list[str]) -> list[str]:
        subs = {"{P}": self.pending, "{R}": self.running, "{S}": self.done, "{T}": self.token,
                "{R}={T}": f"{self.running}={self.token}"}
        return [str(subs[a]) if a in subs else a for a in args]


@pytest.fixture
def world(orch):
    return World(orch)


def assert_one_error(r, code: int, *needles: str) -> str:
    assert r.code == code, r
    assert r.out == "", r
    assert r.err.startswith("orch: error: ") and r.err.count("\n") == 1, r
    for needle in needles:
        assert needle in r.err, (needle, r.err)
    return r.err


# --- the CLI ----------------------------------------------------------------------------

OVER = string_text(MiB + 1)
DEEP = nested_text(65)
CLI_CASES = {
    # malformed JSON
    "payload-malformed": (["submit", "--payload", "{bad"], 2, ["payload"]),
    "payload-trailing": (["submit", "--payload", "[1, 2"], 2, ["payload"]),
    "payload-empty": (["submit", "--payload", ""], 2, ["payload"]),
    "result-malformed": (["release", "{R}", "--token", "{T}", "--outcome", "succeeded",
                          "--result", "{'single': 1}"], 2, ["result"]),
    "checkpoint-malformed": (["checkpoint", "{R}", "--token", "{T}", "--data", "nope"], 2,
                             ["data"]),
    # 1 MiB + 1 byte
    "payload-too-big": (["submit", "--payload", OVER], 2, ["payload", str(MiB)]),
    "result-too-big": (["release", "{R}", "--token", "{T}", "--outcome", "succeeded",
                        "--result", OVER], 2, ["result", str(MiB)]),
    "checkpoint-too-big": (["checkpoint", "{R}", "--token", "{T}", "--data", OVER], 2,
                           ["data", str(MiB)]),
    # 65 deep
    "payload-too-deep": (["submit", "--payload", DEEP], 2, ["payload", "64"]),
    "result-too-deep": (["release", "{R}", "--token", "{T}", "--outcome", "failed",
                         "--result", DEEP], 2, ["result", "64"]),
    "checkpoint-too-deep": (["checkpoint", "{R}", "--token", "{T}", "--data", DEEP], 2,
                            ["data", "64"]),
    # keys over 512 bytes of UTF-8
    "key-513-ascii": (["submit", "--key", "k" * 513], 2, ["key", "512"]),
    "key-513-bytes": (["submit", "--key", "é" * 256 + "k"], 2, ["key", "512"]),
    "key-257-chars-514-bytes": (["submit", "--key", "é" * 257], 2, ["key", "512"]),
    # queue names
    "queue-space": (["submit", "--queue", "a b"], 2, ["queue"]),
    "queue-empty": (["submit", "--queue", ""], 2, ["queue"]),
    "queue-129": (["submit", "--queue", "q" * 129], 2, ["queue", "128"]),
    "queue-slash": (["submit", "--queue", "a/b"], 2, ["queue"]),
    "claim-queue-space": (["claim", "--worker", "w", "--queue", "a b"], 2, ["queue"]),
    "claim-queue-129": (["claim", "--worker", "w", "--queue", "q" * 129], 2, ["queue"]),
    "ls-queue-empty": (["ls", "--queue", ""], 2, ["queue"]),
    # ttl
    "claim-ttl-0": (["claim", "--worker", "w", "--queue", "q", "--ttl", "0"], 2,
                    ["ttl", "86400"]),
    "claim-ttl-negative": (["claim", "--worker", "w", "--queue", "q", "--ttl=-5"], 2,
                           ["ttl", "86400"]),
    "claim-ttl-86401": (["claim", "--worker", "w", "--queue", "q", "--ttl", "86401"], 2,
                        ["ttl", "86400"]),
    "heartbeat-ttl-0": (["heartbeat", "{R}", "--token", "{T}", "--ttl", "0"], 2,
                        ["ttl", "86400"]),
    "heartbeat-ttl-86401": (["heartbeat", "{R}", "--token", "{T}", "--ttl", "86401"], 2,
                            ["ttl", "86400"]),
    "heartbeat-leases-ttl-negative": (["heartbeat", "--lease", "{R}={T}", "--ttl=-1"], 2,
                                      ["ttl", "86400"]),
    # tokens: exactly one way, or none given
    "release-no-token": (["release", "{R}", "--outcome", "succeeded"], 2,
                         ["no token", "--token-file FILE|-", "ORCH_TOKEN"]),
    "release-token-and-file": (["release", "{R}", "--token", "{T}", "--token-file",
                                "/dev/null", "--outcome", "succeeded"], 2, ["not both"]),
    "checkpoint-token-file-empty": (["checkpoint", "{R}", "--token-file", "/dev/null",
                                     "--data", "1"], 2, ["/dev/null", "no token"]),
    "verify-token-file-missing": (["verify", "{R}", "--token-file", "/nonexistent/t"], 2,
                                  ["--token-file", "/nonexistent/t"]),
    "heartbeat-lease-file-missing": (["heartbeat", "--lease", "1=@/nonexistent/t"], 2,
                                     ["/nonexistent/t", "No such file"]),
    # wrong types at the edge
    "priority-word": (["submit", "--priority", "high"], 2, ["priority"]),
    "item-id-word": (["show", "abc"], 2, ["ITEM_ID"]),
    "max-attempts-negative": (["submit", "--max-attempts=-1"], 2, ["max_attempts"]),
    "delay-negative": (["submit", "--delay=-1"], 2, ["delay"]),
    # unknown item id
    "show-unknown": (["show", "9999"], 5, ["9999"]),
    "cancel-unknown": (["cancel", "9999"], 5, ["9999"]),
    "resolve-unknown": (["resolve", "9999", "--outcome", "retry"], 5, ["9999"]),
    "claim-item-unknown": (["claim", "--worker", "w", "--item", "9999"], 5, ["9999"]),
    "heartbeat-unknown": (["heartbeat", "9999", "--token", "{T}"], 5, ["9999"]),
    "release-unknown": (["release", "9999", "--token", "{T}", "--outcome", "succeeded"], 5,
                        ["9999"]),
    "checkpoint-unknown": (["checkpoint", "9999", "--token", "{T}", "--data", "1"], 5,
                           ["9999"]),
    "verify-unknown": (["verify", "9999", "--token", "{T}"], 5, ["9999"]),
    "submit-parent-unknown": (["submit", "--parent", "9999"], 5, ["9999"]),
    # illegal transitions
    "cancel-succeeded": (["cancel", "{S}"], 6, ["succeeded"]),
    "resolve-pending": (["resolve", "{P}", "--outcome", "succeeded"], 6, ["pending"]),
    "resolve-running": (["resolve", "{R}", "--outcome", "retry"], 6, ["running"]),
    "claim-item-succeeded": (["claim", "--worker", "w", "--item", "{S}"], 6, ["succeeded"]),
    "claim-item-live": (["claim", "--worker", "w9", "--item", "{R}"], 6, ["w1"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(cli, db_path, world, case):
    args, code, needles = CLI_CASES[case]
    before = snapshot(db_path)
    r = cli(*world.fmt(args))
    assert_one_error(r, code, *needles)
    assert snapshot(db_path) == before


@pytest.mark.parametrize("args,check", [
    (["submit", "--json", "--payload", string_text(MiB)],
     lambda j: len(json.dumps(j["payload"])) == MiB),
    (["submit", "--json", "--payload", nested_text(64)], lambda j: j["created"]),
    (["submit", "--json", "--key", "k" * 512], lambda j: j["key"] == "k" * 512),
    (["submit", "--json", "--key", "é" * 256], lambda j: j["key"] == "é" * 256),
    (["submit", "--json", "--key", "😀" * 128], lambda j: len(j["key"]) == 128),
    (["submit", "--json", "--queue", "Q" * 128], lambda j: j["queue"] == "Q" * 128),
    (["submit", "--json", "--queue", "A-z_0.9:x"], lambda j: j["queue"] == "A-z_0.9:x"),
    (["claim", "--worker", "w", "--queue", "q", "--ttl", "86400"],
     lambda j: j["id"] and j["lease_expires_at"] is not None),
    (["heartbeat", "{R}", "--token", "{T}", "--ttl", "86400", "--json"],
     lambda j: j["fence"] is not None),
    (["checkpoint", "{R}", "--token", "{T}", "--data", string_text(MiB), "--json"],
     lambda j: len(j["checkpoint"]) == MiB - 2),
    (["checkpoint", "{R}", "--token", "{T}", "--data", nested_text(64), "--json"],
     lambda j: j["fence"] is not None),
    (["release", "{R}", "--token", "{T}", "--outcome", "succeeded", "--json",
      "--result", string_text(MiB)], lambda j: len(j["result"]) == MiB - 2),
], ids=["payload-1MiB", "payload-64-deep", "key-512", "key-512-2byte", "key-512-4byte",
        "queue-128", "queue-charset", "claim-ttl-86400", "heartbeat-ttl-86400",
        "checkpoint-1MiB", "checkpoint-64-deep", "result-1MiB"])
def test_cli_at_the_limit_is_accepted(cli, orch, world, args, check):
    r = cli(*world.fmt(args))
    assert r.code == 0, (r.code, r.err)
    assert check(r.json)
    assert orch.doctor()["ok"]


# --- the Python API ------------------------------------------------------------------------

NAN = float("nan")
API_CASES = {
    # not JSON values
    "payload-set": (lambda o, w: o.submit_task({1, 2}), InvalidInput, "payload", None),
    "payload-nan": (lambda o, w: o.submit_task({"a": NAN}), InvalidInput, "payload", None),
    "payload-object": (lambda o, w: o.submit_task([object()]), InvalidInput, "payload", None),
    "result-set": (lambda o, w: o.release_task(w.running, w.token, "succeeded",
                                               result={1}), InvalidInput, "result", None),
    "checkpoint-nan": (lambda o, w: o.checkpoint(w.running, w.token, NAN), InvalidInput,
                       "data", None),
    "checkpoint-bytes": (lambda o, w: o.checkpoint(w.running, w.token, b"raw"), InvalidInput,
                         "data", None),
    # 1 MiB + 1 byte of JSON text
    "payload-too-big": (lambda o, w: o.submit_task("x" * (MiB - 1)), LimitExceeded,
                        "payload", MiB),
    "payload-too-big-multibyte": (lambda o, w: o.submit_task("é" * (MiB // 2)), LimitExceeded,
                                  "payload", MiB),
    "result-too-big": (lambda o, w: o.release_task(w.running, w.token, "succeeded",
                                                   result="x" * (MiB - 1)),
                       LimitExceeded, "result", MiB),
    "checkpoint-too-big": (lambda o, w: o.checkpoint(w.running, w.token, "x" * (MiB - 1)),
                           LimitExceeded, "data", MiB),
    # 65 deep
    "payload-too-deep": (lambda o, w: o.submit_task(nested_value(65)), LimitExceeded,
                         "payload", 64),
    "payload-too-deep-dicts": (lambda o, w: o.submit_task(_deep_dict(65)), LimitExceeded,
                               "payload", 64),
    "result-too-deep": (lambda o, w: o.release_task(w.running, w.token, "succeeded",
                                                    result=nested_value(65)),
                        LimitExceeded, "result", 64),
    "checkpoint-too-deep": (lambda o, w: o.checkpoint(w.running, w.token, nested_value(65)),
                            LimitExceeded, "data", 64),
    "payload-very-deep": (lambda o, w: o.submit_task(nested_value(5000)), LimitExceeded,
                          "payload", 64),
    # keys
    "key-513-ascii": (lambda o, w: o.submit_task(key="k" * 513), LimitExceeded, "key", 512),
    "key-513-bytes": (lambda o, w: o.submit_task(key="é" * 256 + "k"), LimitExceeded,
                      "key", 512),
    "key-257-chars-514-bytes": (lambda o, w: o.submit_task(key="é" * 257), LimitExceeded,
                                "key", 512),
    "key-empty": (lambda o, w: o.submit_task(key=""), InvalidInput, "key", None),
    "key-int": (lambda o, w: o.submit_task(key=5), InvalidInput, "key", None),
    # queues
    "queue-space": (lambda o, w: o.submit_task(queue="a b"), InvalidInput, "queue", None),
    "queue-empty": (lambda o, w: o.submit_task(queue=""), InvalidInput, "queue", None),
    "queue-129": (lambda o, w: o.submit_task(queue="q" * 129), InvalidInput, "queue", None),
    "claim-queue-space": (lambda o, w: o.claim_task("w", ["q", "a b"]), InvalidInput,
                          "queues", None),
    "claim-queue-empty": (lambda o, w: o.claim_task("w", ""), InvalidInput, "queues", None),
    "claim-queue-129": (lambda o, w: o.claim_task("w", ["q" * 129]), InvalidInput,
                        "queues", None),
    "list-queue-space": (lambda o, w: o.list_tasks(queue="a b"), InvalidInput, "queue", None),
    # ttl
    "claim-ttl-0": (lambda o, w: o.claim_task("w", "q", ttl=0), LimitExceeded, "ttl", 86400),
    "claim-ttl-negative": (lambda o, w: o.claim_task("w", "q", ttl=-1), LimitExceeded,
                           "ttl", 86400),
    "claim-ttl-86401": (lambda o, w: o.claim_task("w", "q", ttl=86401), LimitExceeded,
                        "ttl", 86400),
    "claim-ttl-inf": (lambda o, w: o.claim_task("w", "q", ttl=float("inf")), InvalidInput,
                      "ttl", None),
    "heartbeat-ttl-0": (lambda o, w: o.heartbeat(w.running, w.token, ttl=0), LimitExceeded,
                        "ttl", 86400),
    "heartbeat-ttl-86401": (lambda o, w: o.heartbeat(w.running, w.token, ttl=86401),
                            LimitExceeded, "ttl", 86400),
    "heartbeat-leases-ttl-negative": (
        lambda o, w: o.heartbeat(leases=[{"item_id": w.running, "token": w.token}], ttl=-3),
        LimitExceeded, "ttl", 86400),
    "heartbeat-leases-1001": (
        lambda o, w: o.heartbeat(leases=[{"item_id": i, "token": "t"} for i in range(1, 1002)]),
        LimitExceeded, "leases", 1000),
    # wrong types
    "priority-str": (lambda o, w: o.submit_task(priority="high"), InvalidInput, "priority",
                     None),
    "priority-float": (lambda o, w: o.submit_task(priority=1.5), InvalidInput, "priority",
                       None),
    "priority-bool": (lambda o, w: o.submit_task(priority=True), InvalidInput, "priority",
                      None),
    "priority-int64": (lambda o, w: o.submit_task(priority=1 << 63), LimitExceeded,
                       "priority", None),
    "ttl-bool": (lambda o, w: o.claim_task("w", "q", ttl=True), InvalidInput, "ttl", None),
    "ttl-str": (lambda o, w: o.claim_task("w", "q", ttl="10"), InvalidInput, "ttl", None),
    "queues-int": (lambda o, w: o.claim_task("w", 5), InvalidInput, "queues", None),
    "queues-list-of-int": (lambda o, w: o.claim_task("w", [5]), InvalidInput, "queues", None),
    "worker-int": (lambda o, w: o.claim_task(7, "q"), InvalidInput, "worker_id", None),
    "worker-empty": (lambda o, w: o.claim_task("", "q"), InvalidInput, "worker_id", None),
    "delay-str": (lambda o, w: o.submit_task(delay="soon"), InvalidInput, "delay", None),
    "delay-negative": (lambda o, w: o.submit_task(delay=-1), LimitExceeded, "delay", None),
    "max-attempts-negative": (lambda o, w: o.submit_task(max_attempts=-1), LimitExceeded,
                              "max_attempts", None),
    "kind-unknown": (lambda o, w: o.submit_task(kind="job"), InvalidInput, "kind", None),
    "effect-unknown": (lambda o, w: o.submit_task(effect="maybe"), InvalidInput, "effect",
                       None),
    "item-id-str": (lambda o, w: o.get_task("1"), InvalidInput, "item_id", None),
    "item-id-zero": (lambda o, w: o.cancel_task(0), LimitExceeded, "item_id", None),
    "outcome-unknown": (lambda o, w: o.release_task(w.running, w.token, "done"),
                        InvalidInput, "outcome", None),
    "no-retry-str": (lambda o, w: o.release_task(w.running, w.token, "failed",
                                                 no_retry="yes"), InvalidInput, "no_retry",
                     None),
    "retry-in-negative": (lambda o, w: o.release_task(w.running, w.token, "failed",
                                                      retry_in=-1), LimitExceeded,
                          "retry_in", None),
    "token-int": (lambda o, w: o.heartbeat(w.running, 12345), InvalidInput, "token", None),
    "resolve-outcome": (lambda o, w: o.resolve_task(w.pending, "requeue"), InvalidInput,
                        "outcome", None),
    "list-status": (lambda o, w: o.list_tasks(status="done"), InvalidInput, "status", None),
    "list-limit-negative": (lambda o, w: o.list_tasks(limit=-1), LimitExceeded, "limit", None),
    "submit-many-not-list": (lambda o, w: o.submit_many({"payload": 1}), InvalidInput,
                             "items", None),
    "submit-many-bad-item": (lambda o, w: o.submit_many([{"payload": 1},
                                                         {"priority": "high"}]),
                             InvalidInput, "priority", None),
}


def _deep_dict(depth: int) -> dict:
    v: dict = {}
    for _ in range(depth - 1):
        v = {"k": v}
    return v


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_bad_input(orch, db_path, world, case):
    call, exc_type, field, limit = API_CASES[case]
    before = snapshot(db_path)
    with pytest.raises(exc_type) as exc:
        call(orch, world)
    assert field in str(exc.value), str(exc.value)
    assert exc.value.data.get("field") == field
    if exc_type is LimitExceeded and limit is not None:
        assert str(limit) in str(exc.value)
        assert exc.value.data.get("limit") == limit
    assert snapshot(db_path) == before
    assert orch.verify(world.running, world.token)["valid"] is True


API_NOT_FOUND = {
    "get": lambda o, w: o.get_task(9999),
    "cancel": lambda o, w: o.cancel_task(9999),
    "resolve": lambda o, w: o.resolve_task(9999, "retry"),
    "claim-item": lambda o, w: o.claim_task("w", item_id=9999),
    "heartbeat": lambda o, w: o.heartbeat(9999, w.token),
    "release": lambda o, w: o.release_task(9999, w.token, "succeeded"),
    "checkpoint": lambda o, w: o.checkpoint(9999, w.token, 1),
    "verify": lambda o, w: o.verify(9999, w.token),
    "submit-parent": lambda o, w: o.submit_task(parent_id=9999),
}


@pytest.mark.parametrize("case", list(API_NOT_FOUND))
def test_api_unknown_item(orch, db_path, world, case):
    before = snapshot(db_path)
    with pytest.raises(NotFound) as exc:
        API_NOT_FOUND[case](orch, world)
    assert "9999" in str(exc.value)
    assert snapshot(db_path) == before


API_CONFLICT = {
    "cancel-succeeded": (lambda o, w: o.cancel_task(w.done), "succeeded"),
    "resolve-pending": (lambda o, w: o.resolve_task(w.pending, "succeeded"), "pending"),
    "resolve-running": (lambda o, w: o.resolve_task(w.running, "failed"), "running"),
    "resolve-succeeded": (lambda o, w: o.resolve_task(w.done, "retry"), "succeeded"),
    "claim-item-succeeded": (lambda o, w: o.claim_task("w", item_id=w.done), "succeeded"),
    "claim-item-live": (lambda o, w: o.claim_task("w9", item_id=w.running), "w1"),
}


@pytest.mark.parametrize("case", list(API_CONFLICT))
def test_api_illegal_transition(orch, db_path, world, case):
    call, needle = API_CONFLICT[case]
    before = snapshot(db_path)
    with pytest.raises(Conflict) as exc:
        call(orch, world)
    assert needle in str(exc.value)
    assert snapshot(db_path) == before


def test_api_at_the_limit_is_accepted(orch, world):
    item = orch.submit_task("x" * (MiB - 2))
    assert item["created"] and len(item["payload"]) == MiB - 2
    assert orch.submit_task(nested_value(64))["created"]
    assert orch.submit_task(_deep_dict(64))["created"]
    for key in ("k" * 512, "é" * 256, "😀" * 128):
        got = orch.submit_task(key=key)
        assert got["created"] and got["key"] == key
    assert orch.submit_task(queue="Q" * 128)["queue"] == "Q" * 128
    hb = orch.heartbeat(world.running, world.token, ttl=86400)
    assert hb["lease_expires_at"] - orch.status()["now"] <= 86_400_000
    cp = orch.checkpoint(world.running, world.token, "y" * (MiB - 2))
    assert len(cp["checkpoint"]) == MiB - 2
    orch.checkpoint(world.running, world.token, nested_value(64))
    done = orch.release_task(world.running, world.token, "succeeded", result="z" * (MiB - 2))
    assert done["status"] == "succeeded" and len(done["result"]) == MiB - 2
    claim = orch.claim_task("w", "q", ttl=86400)
    assert claim["id"] == world.pending
    assert claim["lease_expires_at"] - claim["heartbeat_at"] == 86_400_000
    assert orch.doctor()["ok"]
