"""The commands that read: status, ls (newest first, filters, 100 unless told), show and
events (after a sequence number, of one item; an unknown item is not found)."""

from __future__ import annotations

import json

import pytest
from conftest import T0_MS, claim, ok, one_error_line, submit


def test_status(cli, clock):
    submit(cli)
    a = submit(cli)
    b = submit(cli)
    cli("claim", "--worker", "alpha", "--ttl", "100")
    cli("claim", "--worker", "beta", "--ttl", "5")
    clock.tick(6)
    r = cli("status")
    ok(r)
    assert "pending 1" in r.out and "running 2" in r.out
    assert "workers (1 live):" in r.out
    alpha = [line for line in r.out.splitlines() if "alpha" in line]
    assert len(alpha) == 1 and alpha[0].rstrip().endswith("1")  # holding item 1
    assert "expired leases not yet recovered: 1" in r.out
    r = cli("status", "--json")
    ok(r)
    st = r.json
    assert st["counts"]["running"] == 2
    assert st["fence"] == max(i["fence"] for i in cli("ls", "--json").json if i["fence"])
    assert [(w["worker_id"], w["holding"]) for w in st["workers"]] == [("alpha", [1])]
    assert [(x["id"], x["worker_id"]) for x in st["expired_leases"]] == [(2, "beta")]
    assert (a, b) == (2, 3)


def test_ls(cli):
    ids = [submit(cli, "--queue", q, "--payload", json.dumps({"n": i}))
           for i, q in enumerate(["a", "b", "a"])]
    s = submit(cli, "--kind", "session")
    claim(cli, "--queue", "a")
    r = cli("ls")
    ok(r)
    lines = r.out.splitlines()
    assert lines[0].split() == ["id", "kind", "queue", "status", "prio", "tries", "worker",
                                "fence", "key", "payload"]
    assert [int(line.split()[0]) for line in lines[1:]] == [s, ids[2], ids[1], ids[0]]
    r = cli("ls", "--json")
    assert [i["id"] for i in r.json] == [s, ids[2], ids[1], ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--queue", "a").json] == [ids[2], ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--status", "running").json] == [ids[0]]
    assert [i["id"] for i in cli("ls", "--json", "--kind", "session").json] == [s]
    assert [i["id"] for i in cli("ls", "--json", "--limit", "1").json] == [s]
    assert len(cli("ls", "--json", "--limit", "0").json) == 4
    r = cli("ls", "--status", "dead")
    ok(r)
    assert len(r.out.splitlines()) == 1  # the header only
    one_error_line(cli("ls", "--status", "nope"), 2)


def test_ls_limit_default_100(cli, orch):
    orch.submit_many([{"payload": i} for i in range(102)])
    assert len(cli("ls", "--json").json) == 100
    assert len(cli("ls", "--json", "--limit", "0").json) == 102


def test_show(cli, clock):
    a = submit(cli, "--payload", '{"x": 1}', "--key", "k1")
    r = cli("show", str(a))
    ok(r)
    fields = dict(line.split(None, 1) for line in r.out.splitlines())
    assert fields["id"] == str(a) and fields["status"] == "pending"
    assert fields["key"] == "k1" and fields["payload"] == '{"x":1}'
    assert fields["attempts"] == "0 of 3"
    r = cli("show", str(a), "--json")
    ok(r)
    item = r.json
    for field in ("id", "kind", "queue", "parent_id", "key", "payload", "priority", "status",
                  "attempts", "max_attempts", "run_after", "effect", "checkpoint", "result",
                  "error", "worker_id", "fence", "lease_expires_at"):
        assert field in item, field
    assert item["payload"] == {"x": 1} and item["run_after"] == T0_MS
    one_error_line(cli("show", "999"), 5)


def test_events(cli):
    a = submit(cli)
    b = submit(cli)
    c = claim(cli)
    cli("heartbeat", str(a), "--token", c["token"])
    r = cli("events")
    ok(r)
    lines = r.out.splitlines()
    assert len(lines) == 4
    assert lines[2].split()[:5] == ["3", lines[2].split()[1], "item", str(a), "claimed"]
    assert "w1" in lines[2] and f"fence {c['fence']}" in lines[2]
    r = cli("events", "--json")
    ok(r)
    evs = r.json
    assert [(e["seq"], e["item_id"], e["type"]) for e in evs] == [
        (1, a, "submitted"), (2, b, "submitted"), (3, a, "claimed"), (4, a, "heartbeat")]
    assert [e["seq"] for e in cli("events", "--json", "--since", "2").json] == [3, 4]
    assert [e["seq"] for e in cli("events", "--json", "--item", str(a)).json] == [1, 3, 4]
    assert [e["seq"] for e in cli("events", "--json", "--item", str(a), "--since", "3")
            .json] == [4]
    r = cli("events", "--since", "4")
    ok(r)
    assert r.out == ""
    assert cli("events", "--json", "--item", str(b), "--since", "2").json == []


@pytest.mark.parametrize("extra", [[], ["--json"], ["--since", "5"]])
def test_events_of_an_unknown_item_is_not_found(cli, extra):
    submit(cli)
    assert "item 999 not found" in one_error_line(cli("events", "--item", "999", *extra), 5)


def test_events_follow_of_an_unknown_item_stops_at_once(cli, orch_cli):
    submit(cli)
    p = orch_cli("events", "--item", "999", "--follow", timeout=20)
    assert (p.returncode, p.stdout) == (5, ""), p
    assert p.stderr == "orch: error: item 999 not found\n"
