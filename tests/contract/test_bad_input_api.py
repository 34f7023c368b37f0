"""Bad input through the Python API: the documented exception, naming the field (and the
limit, for limits), and nothing changed; values exactly at the limits are accepted."""

from __future__ import annotations

import pytest
from helpers.bad_values import MiB, nested_value

from orchestrator import Conflict, InvalidInput, LimitExceeded, NotFound

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
def test_api_bad_input(api, store, world, case):
    call, exc_type, field, limit = API_CASES[case]
    before = store.snapshot()
    with pytest.raises(exc_type) as exc:
        call(api, world)
    assert field in str(exc.value), str(exc.value)
    assert exc.value.data.get("field") == field
    if exc_type is LimitExceeded and limit is not None:
        assert str(limit) in str(exc.value)
        assert exc.value.data.get("limit") == limit
    assert store.snapshot() == before
    assert api.verify(world.running, world.token)["valid"] is True


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
def test_api_unknown_item(api, store, world, case):
    before = store.snapshot()
    with pytest.raises(NotFound) as exc:
        API_NOT_FOUND[case](api, world)
    assert "9999" in str(exc.value)
    assert store.snapshot() == before


API_CONFLICT = {
    "cancel-succeeded": (lambda o, w: o.cancel_task(w.done), "succeeded"),
    "resolve-pending": (lambda o, w: o.resolve_task(w.pending, "succeeded"), "pending"),
    "resolve-running": (lambda o, w: o.resolve_task(w.running, "failed"), "running"),
    "resolve-succeeded": (lambda o, w: o.resolve_task(w.done, "retry"), "succeeded"),
    "claim-item-succeeded": (lambda o, w: o.claim_task("w", item_id=w.done), "succeeded"),
    "claim-item-live": (lambda o, w: o.claim_task("w9", item_id=w.running), "w1"),
}


@pytest.mark.parametrize("case", list(API_CONFLICT))
def test_api_illegal_transition(api, store, world, case):
    call, needle = API_CONFLICT[case]
    before = store.snapshot()
    with pytest.raises(Conflict) as exc:
        call(api, world)
    assert needle in str(exc.value)
    assert store.snapshot() == before


def test_api_at_the_limit_is_accepted(api, world):
    item = api.submit_task("x" * (MiB - 2))
    assert item["created"] and len(item["payload"]) == MiB - 2
    assert api.submit_task(nested_value(64))["created"]
    assert api.submit_task(_deep_dict(64))["created"]
    for key in ("k" * 512, "é" * 256, "😀" * 128):
        got = api.submit_task(key=key)
        assert got["created"] and got["key"] == key
    assert api.submit_task(queue="Q" * 128)["queue"] == "Q" * 128
    hb = api.heartbeat(world.running, world.token, ttl=86400)
    assert hb["lease_expires_at"] - api.status()["now"] <= 86_400_000
    cp = api.checkpoint(world.running, world.token, "y" * (MiB - 2))
    assert len(cp["checkpoint"]) == MiB - 2
    api.checkpoint(world.running, world.token, nested_value(64))
    done = api.release_task(world.running, world.token, "succeeded", result="z" * (MiB - 2))
    assert done["status"] == "succeeded" and len(done["result"]) == MiB - 2
    claim = api.claim_task("w", "q", ttl=86400)
    assert claim["id"] == world.pending
    assert claim["lease_expires_at"] - claim["heartbeat_at"] == 86_400_000
    assert api.doctor()["ok"]
