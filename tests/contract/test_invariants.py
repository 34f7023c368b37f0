"""Whatever valid operations run, in whatever order, the store stays sound: only an item's
latest claim verifies, and only while its lease lives; fences only grow; a refused
operation records nothing; doctor finds nothing wrong."""

from __future__ import annotations

import itertools

from conftest import T0, n_events
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import Conflict, LeaseLost
from orchestrator.clock import now_ms

EXAMPLES = itertools.count()


WORKERS = st.sampled_from(["w1", "w2", "w3"])


OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(-2, 2), st.sampled_from(["default", "q2"]),
              st.booleans(), st.integers(0, 3), st.sampled_from([None, "k1", "k2"])),
    st.tuples(st.just("claim"), WORKERS, st.sampled_from([1, 5, 30])),
    st.tuples(st.just("claim_item"), st.integers(0, 9), WORKERS),
    st.tuples(st.just("heartbeat"), st.integers(0, 9), st.sampled_from([None, 2, 40])),
    st.tuples(st.just("heartbeat_many"), st.lists(st.integers(0, 9), min_size=1, max_size=4),
              st.sampled_from([None, 2, 40])),
    st.tuples(st.just("release"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "cancelled", "requeue"])),
    st.tuples(st.just("release_next"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "cancelled", "requeue"])),
    st.tuples(st.just("checkpoint"), st.integers(0, 9)),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("resolve"), st.integers(0, 9),
              st.sampled_from(["succeeded", "failed", "retry", "cancelled"])),
    st.tuples(st.just("recover"), st.booleans()),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3, 10, 60, 400])),
)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, min_size=1, max_size=40))
def test_random_operations_keep_invariants(store, ops):
    # each example on a new, empty store of the backend
    with freeze_time(T0) as clock, store.open(f"p{next(EXAMPLES)}") as o:
        items: list[int] = []
        claims: list[dict] = []  # every claim ever handed out, in order
        latest: dict[int, str] = {}  # item -> token of its latest claim
        for op in ops:
            name, args = op[0], op[1:]
            n = n_events(o)
            try:
                if name == "submit":
                    prio, queue, unsafe, max_attempts, key = args
                    r = o.submit_task(prio, priority=prio, queue=queue, key=key,
                                      max_attempts=max_attempts,
                                      effect="unsafe" if unsafe else None)
                    if r["created"]:
                        items.append(r["id"])
                elif name == "claim":
                    worker, ttl = args
                    c = o.claim_task(worker, ["default", "q2"], ttl=ttl)
                    if c is not None:
                        claims.append(c)
                        latest[c["id"]] = c["token"]
                elif name == "claim_item" and items:
                    c = o.claim_task(args[1], item_id=items[args[0] % len(items)])
                    claims.append(c)
                    latest[c["id"]] = c["token"]
                elif name in ("heartbeat", "release", "checkpoint") and claims:
                    c = claims[args[0] % len(claims)]
                    if name == "heartbeat":
                        o.heartbeat(c["id"], c["token"], ttl=args[1])
                    elif name == "release":
                        o.release_task(c["id"], c["token"], args[1])
                    else:
                        o.checkpoint(c["id"], c["token"], {"n": n})
                elif name == "release_next" and claims:
                    c = claims[args[0] % len(claims)]
                    nxt = o.release_and_claim(c["id"], c["token"], args[1],
                                              queues=["default", "q2"])["next"]
                    if nxt is not None:
                        claims.append(nxt)
                        latest[nxt["id"]] = nxt["token"]
                elif name == "heartbeat_many" and claims:
                    picked = list(dict.fromkeys(claims[i % len(claims)]["id"] for i in args[0]))
                    tokens = {c["id"]: c["token"] for c in claims}  # the latest of each
                    r = o.heartbeat(leases=[{"item_id": i, "token": tokens[i]} for i in picked],
                                    ttl=args[1])
                    assert [x["id"] for x in r["leases"]] == picked
                    extended = sum("error" not in x for x in r["leases"])
                    assert n_events(o) == n + extended  # a refused lease records nothing
                elif name in ("cancel", "resolve") and items:
                    iid = items[args[0] % len(items)]
                    if name == "cancel":
                        o.cancel_task(iid)
                    else:
                        o.resolve_task(iid, args[1])
                elif name == "recover":
                    o.stale_recovery(dry_run=args[0])
                elif name == "tick":
                    clock.tick(args[0])
            except (LeaseLost, Conflict):
                assert n_events(o) == n  # a refused operation records nothing
            # at most the latest claim of an item is valid, and only while its lease lives
            now = now_ms()
            for c in claims:
                item = o.get_task(c["id"])
                live = (latest[c["id"]] == c["token"] and item["status"] == "running"
                        and item["lease_expires_at"] > now)
                assert o.verify(c["id"], c["token"])["valid"] is live
        fences = [c["fence"] for c in claims]
        assert all(a < b for a, b in itertools.pairwise(fences)), fences
        report = o.doctor()
        assert report["ok"], report["problems"]


def test_doctor_is_clean_after_ordinary_work(api, clock):
    # tasks, a session tree, recovery and takeover, all by the rules
    api.submit_many([{"payload": i} for i in range(3)])
    a = api.claim_task("w", ttl=5)
    api.heartbeat(a["id"], a["token"])
    api.checkpoint(a["id"], a["token"], {"half": True})
    api.release_task(a["id"], a["token"], "failed", retry_in=0)
    b = api.claim_task("w", ttl=1)
    s = api.start_session("agent", ttl=5)
    g = api.create_goal(s["id"], s["token"], key="g")
    t = api.execute_tool_idempotent(g["id"], g["token"], "tool", {"x": 1})
    api.release_task(t["id"], t["token"], "succeeded", result=1)
    api.release_task(g["id"], g["token"], "succeeded")
    clock.tick(2)
    api.claim_task("w2", ttl=5, item_id=b["id"])  # a takeover
    clock.tick(10)
    assert api.stale_recovery()["count"] == 2
    report = api.doctor()
    assert report["ok"], report["problems"]
