"""Reads: status (counts, live workers, expired leases not yet recovered), list_tasks
(newest first, by status, queue and kind, 100 unless told) and list_events (after a
sequence number, of one item, up to a limit)."""

from __future__ import annotations

from conftest import T0_MS

from orchestrator.clock import now_ms


def test_status_workers_and_expired_leases(api, clock):
    a, b, c, d = (api.submit_task(i)["id"] for i in range(4))
    ca = api.claim_task("w1", ttl=10)
    cb = api.claim_task("w1", ttl=100)
    cc = api.claim_task("w2", ttl=5)
    clock.tick(6)
    st = api.status()
    assert st["now"] == now_ms()
    assert st["counts"] == {"pending": 1, "running": 3, "succeeded": 0, "failed": 0,
                            "dead": 0, "cancelled": 0, "unknown": 0}
    assert st["fence"] == cc["fence"] > cb["fence"] > ca["fence"]
    workers = {w["worker_id"]: w for w in st["workers"]}
    assert set(workers) == {"w1"}  # w2's only lease expired
    assert workers["w1"]["holding"] == [a, b]
    assert workers["w1"]["lease_expires_at"] == cb["lease_expires_at"]
    assert len(st["expired_leases"]) == 1
    assert st["expired_leases"][0].items() >= {
        "id": c, "kind": "task", "queue": "default", "worker_id": "w2",
        "fence": cc["fence"], "lease_expires_at": T0_MS + 5000}.items()
    api.stale_recovery()
    st = api.status()
    assert st["expired_leases"] == []
    assert st["counts"]["pending"] == 2 and st["counts"]["running"] == 2
    clock.tick(5)  # a's lease has ended too; w1 is still live through b
    st = api.status()
    assert [x["id"] for x in st["expired_leases"]] == [a]
    assert [w["worker_id"] for w in st["workers"]] == ["w1"]
    clock.tick(100)
    assert api.status()["workers"] == []
    assert ca["id"] == a and d not in (ca["id"], cb["id"], cc["id"])


def test_list_tasks(api, clock):
    ids = [api.submit_task(i, queue="a" if i % 2 else "b")["id"] for i in range(6)]
    s = api.submit_task("s", kind="session")["id"]
    c = api.claim_task("w1", ["a"])
    assert c["id"] == ids[1]
    everything = api.list_tasks()
    assert [i["id"] for i in everything] == [s, *reversed(ids)]
    assert [i["id"] for i in api.list_tasks(queue="a")] == [ids[5], ids[3], ids[1]]
    assert [i["id"] for i in api.list_tasks(status="running")] == [ids[1]]
    assert [i["id"] for i in api.list_tasks(status="pending", queue="a")] == [ids[5], ids[3]]
    assert [i["id"] for i in api.list_tasks(kind="session")] == [s]
    assert [i["id"] for i in api.list_tasks(limit=2)] == [s, ids[5]]
    assert api.list_tasks(status="dead") == []
    assert all("token_hash" not in i for i in everything)


def test_list_tasks_default_limit_100_and_zero_for_all(api, clock):
    api.submit_many([{"payload": i} for i in range(105)])
    assert len(api.list_tasks()) == 100
    assert len(api.list_tasks(limit=0)) == 105
    assert api.list_tasks()[0]["payload"] == 104


def test_list_events(api, clock):
    a = api.submit_task("a")["id"]
    b = api.submit_task("b")["id"]
    c = api.claim_task("w1")
    api.heartbeat(a, c["token"])
    api.release_task(a, c["token"], "succeeded")
    evs = api.list_events()
    assert [e["seq"] for e in evs] == [1, 2, 3, 4, 5]
    assert [(e["item_id"], e["type"]) for e in evs] == [
        (a, "submitted"), (b, "submitted"), (a, "claimed"), (a, "heartbeat"), (a, "released")]
    assert [e["seq"] for e in api.list_events(since=3)] == [4, 5]
    assert api.list_events(since=5) == []
    assert [e["seq"] for e in api.list_events(item_id=a)] == [1, 3, 4, 5]
    assert [e["seq"] for e in api.list_events(item_id=a, since=3)] == [4, 5]
    assert [e["seq"] for e in api.list_events(item_id=b)] == [2]
    assert [e["seq"] for e in api.list_events(limit=2)] == [1, 2]
    assert [e["seq"] for e in api.list_events(since=1, limit=2)] == [2, 3]
    e = evs[2]
    assert e["at"] == T0_MS and e["worker_id"] == "w1" and e["fence"] == c["fence"]
    assert isinstance(e["detail"], dict) and isinstance(e["hash"], str)
    assert evs[3]["prev_hash"] == evs[2]["hash"]
