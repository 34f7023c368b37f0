"""Bad input on the command line: the documented exit code, one ``orch: error:`` line
naming the field (and the limit, for limits), and a database left exactly as it was;
values exactly at the limits are accepted."""

from __future__ import annotations

import json

import pytest
from conftest import snapshot
from helpers.bad_values import MiB, nested_text, string_text


def assert_one_error(r, code: int, *needles: str) -> str:
    assert r.code == code, r
    assert r.out == "", r
    assert r.err.startswith("orch: error: ") and r.err.count("\n") == 1, r
    for needle in needles:
        assert needle in r.err, (needle, r.err)
    return r.err


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
