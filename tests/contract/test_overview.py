"""The overview the web view shows: items by queue and status (goals and tool executions
by kind), each worker's leases, and the last hour's claims, releases and failures per
minute, counted once however often it is asked (``since``)."""

from __future__ import annotations

from orchestrator.rules.overview import BUCKET_MS, BUCKETS


def totals(activity: dict) -> dict:
    return {k: sum(b[k] for b in activity["buckets"]) for k in ("claims", "releases", "failures")}


def test_counts_leases_and_the_last_hour(api):
    empty = api.overview()
    assert empty["queues"] == {} and empty["workers"] == [] and empty["last_seq"] == 0
    assert set(empty["counts"]) == {"pending", "running", "succeeded", "failed", "dead",
                                    "cancelled", "unknown"}
    for q in ("a", "a", "b"):
        api.submit_task(queue=q)
    ok = api.claim_task("w1", "a", ttl=60)
    api.release_task(ok["id"], ok["token"], "succeeded")
    bad = api.claim_task("w1", "a", ttl=60)
    api.release_task(bad["id"], bad["token"], "failed", no_retry=True)
    held = api.claim_task("w2", "b", ttl=60)
    s = api.start_session("agent", ttl=60)
    g = api.create_goal(s["id"], s["token"], ttl=60)
    ov = api.overview()
    assert ov["counts"]["running"] == 3 and ov["counts"]["succeeded"] == 1
    assert ov["queues"]["a"] == {**dict.fromkeys(ov["counts"], 0), "succeeded": 1, "failed": 1}
    assert ov["queues"]["b"]["running"] == 1
    assert ov["queues"]["default"]["running"] == 1  # the session
    assert ov["children"]["goal"]["running"] == 1 and "session:" not in str(ov["queues"])
    leases = {w["worker_id"]: [x["id"] for x in w["leases"]] for w in ov["workers"]}
    assert leases == {"w2": [held["id"]], "agent": sorted([s["id"], g["id"]])}
    lease = ov["workers"][1]["leases"][0]
    assert set(lease) == {"id", "kind", "queue", "worker_id", "fence", "lease_ttl_ms",
                          "lease_expires_at", "heartbeat_at", "cancel_requested"}
    act = ov["activity"]
    assert act["bucket_ms"] == BUCKET_MS
    assert act["start"] == (ov["now"] // BUCKET_MS - (BUCKETS - 1)) * BUCKET_MS
    assert totals(act) == {"claims": 5, "releases": 2, "failures": 1}
    # asked again from where it left off: only what came since
    assert totals(api.overview(since=ov["last_seq"])["activity"]) == \
        {"claims": 0, "releases": 0, "failures": 0}
    api.release_task(held["id"], held["token"], "failed", retry_in=0)
    later = api.overview(since=ov["last_seq"])
    assert totals(later["activity"]) == {"claims": 0, "releases": 1, "failures": 1}
    assert later["last_seq"] > ov["last_seq"]


def test_counting_the_items_can_be_left_out(api):
    api.submit_task(queue="a")
    c = api.claim_task("w1", "a")
    ov = api.overview(counts=False)
    assert (ov["counts"], ov["queues"], ov["children"]) == (None, None, None)
    assert [x["id"] for w in ov["workers"] for x in w["leases"]] == [c["id"]]
    assert totals(ov["activity"])["claims"] == 1
