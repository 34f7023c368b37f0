"""The commands that change state, run in-process (a real process where stdin matters):
init, submit, claim (JSON always; exit 3 when there is nothing), heartbeat of one lease
or several, release with each outcome, checkpoint, verify, recover, resolve, cancel."""

from __future__ import annotations

import json

from conftest import T0_MS, claim, ok, one_error_line, submit

from orchestrator import Orchestrator
from orchestrator.store import SCHEMA_VERSION


def test_init(cli, db_path):
    assert not db_path.exists()
    r = cli("init")
    ok(r)
    assert str(db_path) in r.out and f"schema {SCHEMA_VERSION}" in r.out
    assert db_path.exists()
    r = cli("init", "--json")
    ok(r)
    assert r.json == {"db": str(db_path), "schema_version": SCHEMA_VERSION}


def test_submit_text_and_json(cli):
    r = cli("submit", "--payload", '{"url": "https://example.org"}')
    ok(r)
    assert r.out.strip() == "submitted: item 1 (task, queue default, pending)"
    r = cli("submit", "--json", "--queue", "crawl", "--payload", '[1, 2]', "--priority", "7",
            "--key", "page-1", "--max-attempts", "5", "--effect", "unsafe")
    ok(r)
    item = r.json
    assert item["created"] is True and item["id"] == 2
    assert item["queue"] == "crawl" and item["payload"] == [1, 2]
    assert item["priority"] == 7 and item["key"] == "page-1"
    assert item["max_attempts"] == 5 and item["effect"] == "unsafe"
    assert item["kind"] == "task" and item["status"] == "pending"
    r = cli("submit", "--queue", "crawl", "--key", "page-1", "--payload", "3")
    ok(r)
    assert r.out.strip() == "exists: item 2 (task, queue crawl, pending)"
    r = cli("submit", "--json", "--queue", "crawl", "--key", "page-1")
    assert r.json["created"] is False and r.json["payload"] == [1, 2]


def test_submit_delay_kind_parent(cli, clock):
    r = cli("submit", "--json", "--delay", "2.5")
    ok(r)
    assert r.json["run_after"] == T0_MS + 2500
    session = cli("submit", "--json", "--kind", "session")
    ok(session)
    assert session.json["kind"] == "session"
    assert session.json["max_attempts"] == 0  # sessions: no attempt limit
    child = cli("submit", "--json", "--parent", str(session.json["id"]), "--max-attempts", "1")
    ok(child)
    assert child.json["parent_id"] == session.json["id"] and child.json["kind"] == "task"
    assert child.json["max_attempts"] == 1 and child.json["effect"] == "idempotent"
    one_error_line(cli("submit", "--parent", "999"), 5)


def test_submit_payload_file(cli, tmp_path):
    f = tmp_path / "payload.json"
    f.write_text('{"from": "file", "n": [1, 2, 3]}')
    r = cli("submit", "--json", "--payload-file", str(f))
    ok(r)
    assert r.json["payload"] == {"from": "file", "n": [1, 2, 3]}
    r = cli("submit", "--payload", "1", "--payload-file", str(f))
    one_error_line(r, 2)


def test_submit_payload_from_stdin(orch_cli, db_path):
    p = orch_cli("submit", "--json", "--payload-file", "-", input='{"from": "stdin"}\n')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["payload"] == {"from": "stdin"}
    with Orchestrator(db_path) as o:
        assert o.get_task(1)["payload"] == {"from": "stdin"}
    p = orch_cli("submit", "--payload-file", "-", input="{not json")
    assert p.returncode == 2
    assert p.stderr.startswith("orch: error: payload") and p.stderr.count("\n") == 1


def test_claim_prints_json_always(cli, clock):
    iid = submit(cli, "--queue", "q", "--payload", '{"a": 1}')
    r = cli("claim", "--worker", "w1", "--queue", "q", "--ttl", "60")
    ok(r)
    c = r.json  # JSON without --json
    assert c["id"] == iid and c["status"] == "running" and c["worker_id"] == "w1"
    # a claim's fence is the sequence number of its 'claimed' event (after 'submitted')
    assert c["attempt"] == 1 and c["fence"] == 2 and c["payload"] == {"a": 1}
    assert c["lease_expires_at"] == T0_MS + 60_000
    assert isinstance(c["token"], str) and c["token"]


def test_claim_nothing_exits_3(cli):
    cli("init")
    r = cli("claim", "--worker", "w1")
    assert r.code == 3 and r.out == ""
    assert "nothing to claim" in r.err
    r = cli("claim", "--worker", "w1", "--wait", "0.2")
    assert r.code == 3


def test_claim_queues_kinds_and_item(cli, clock):
    a = submit(cli, "--queue", "a")
    b = submit(cli, "--queue", "b", "--priority", "3")
    s = submit(cli, "--kind", "session", "--priority", "9")
    later = submit(cli, "--delay", "60")
    assert claim(cli, "--queue", "a", "--queue", "b")["id"] == b
    assert claim(cli, "--queue", "a", "--queue", "b")["id"] == a
    assert claim(cli, "--kind", "session")["id"] == s
    assert cli("claim", "--worker", "w1").code == 3  # `later` is delayed
    assert claim(cli, "--item", str(later))["id"] == later  # --item ignores run_after
    r = cli("claim", "--worker", "w2", "--item", str(later))
    err = one_error_line(r, 6)
    assert "w1" in err  # names the holder
    one_error_line(cli("claim", "--worker", "w2", "--item", "999"), 5)


def test_claim_item_takes_over_expired_lease(cli, clock):
    iid = submit(cli)
    old = claim(cli, "--ttl", "5")
    clock.tick(6)
    r = cli("claim", "--worker", "w2", "--item", str(iid))
    ok(r)
    assert r.json["fence"] > old["fence"] and r.json["worker_id"] == "w2"
    one_error_line(cli("heartbeat", str(iid), "--token", old["token"]), 4)
    types = [e["type"] for e in cli("events", "--json", "--item", str(iid)).json]
    assert types == ["submitted", "claimed", "taken_over", "claimed"]


def test_heartbeat_one_lease_and_several(cli, clock):
    a = submit(cli)
    b = submit(cli)
    c = submit(cli)
    ca = claim(cli, "--ttl", "10")
    cb = claim(cli, "--ttl", "20")
    cc = claim(cli, "--ttl", "1")
    clock.tick(3)  # c's lease has ended
    r = cli("heartbeat", str(a), "--token", ca["token"])
    ok(r)
    assert r.out.startswith(f"item {a}: lease until ")
    r = cli("heartbeat", str(a), "--token", ca["token"], "--ttl", "4", "--json")
    ok(r)
    assert r.json == {"id": a, "fence": ca["fence"], "lease_expires_at": T0_MS + 7000,
                      "cancel_requested": False}
    # several: without --ttl each lease gets its claim's ttl again
    r = cli("heartbeat", "--lease", f"{a}={ca['token']}", "--lease", f"{b}={cb['token']}",
            "--json")
    ok(r)
    assert r.json == {"leases": [
        {"id": a, "fence": ca["fence"], "lease_expires_at": T0_MS + 13_000,
         "cancel_requested": False},
        {"id": b, "fence": cb["fence"], "lease_expires_at": T0_MS + 23_000,
         "cancel_requested": False}]}
    # one expired among them: refused alone, the others extended, exit 4
    r = cli("heartbeat", "--lease", f"{a}={ca['token']}", "--lease", f"{c}={cc['token']}",
            "--lease", f"{b}={cb['token']}", "--ttl", "100")
    assert r.code == 4, r
    lines = r.out.splitlines()
    assert lines[0].startswith(f"item {a}: lease until ")
    assert lines[1].startswith(f"item {c}: refused: item {c}: the lease expired at ")
    assert lines[2].startswith(f"item {b}: lease until ")
    assert r.err == f"orch: error: 1 of 3 lease(s) refused: item {c}\n"
    leases = {i["id"]: i["lease_expires_at"] for i in cli("ls", "--json").json}
    assert leases == {a: T0_MS + 103_000, b: T0_MS + 103_000, c: T0_MS + 1000}
    # the token is never echoed in an error about a --lease argument
    for bad in ("nope", f"{a}", f"{a}=", f"x={ca['token']}"):
        err = one_error_line(cli("heartbeat", "--lease", bad), 2)
        assert "#1: expected ID=TOKEN or ID=@FILE" in err and ca["token"] not in err


def test_heartbeat_usage_errors(cli):
    a = submit(cli)
    ca = claim(cli)
    one_error_line(cli("heartbeat"), 2)
    err = one_error_line(cli("heartbeat", str(a)), 2)
    assert "--token T, --token-file FILE|- or the environment variable ORCH_TOKEN" in err
    one_error_line(cli("heartbeat", str(a), "--lease", f"{a}={ca['token']}"), 2)
    one_error_line(cli("heartbeat", "--token", ca["token"], "--lease", f"{a}={ca['token']}"), 2)
    one_error_line(cli("heartbeat", "--lease", f"{a}={ca['token']}",
                       "--lease", f"{a}={ca['token']}"), 2)  # one item twice
    one_error_line(cli("heartbeat", "--lease", f"0={ca['token']}"), 2)
    one_error_line(cli("heartbeat", str(a), "--token", "nope"), 4)
    one_error_line(cli("heartbeat", "987", "--token", "nope"), 5)
    # by worker name: refused, saying why
    err = one_error_line(cli("heartbeat", "--worker", "w1"), 2)
    assert "no longer accepted" in err and "reusing its name" in err


def test_heartbeat_shows_cancel_requested(cli):
    a = submit(cli)
    c = claim(cli)
    r = cli("cancel", str(a))
    ok(r)
    assert "cancel requested" in r.out
    r = cli("heartbeat", str(a), "--token", c["token"])
    ok(r)
    assert "cancel requested" in r.out
    r = cli("heartbeat", str(a), "--token", c["token"], "--json")
    assert r.json["cancel_requested"] is True
    r = cli("release", str(a), "--token", c["token"], "--outcome", "failed", "--json")
    ok(r)
    assert r.json["status"] == "cancelled"


def test_release_outcomes(cli, clock):
    a, b, c, d, e = (submit(cli) for _ in range(5))
    ca, cb, cc, cd, ce = (claim(cli) for _ in range(5))
    assert [x["id"] for x in (ca, cb, cc, cd, ce)] == [a, b, c, d, e]
    r = cli("release", str(a), "--token", ca["token"], "--outcome", "succeeded",
            "--result", '{"pages": 3}')
    ok(r)
    assert r.out.strip() == f"item {a}: succeeded"
    assert cli("show", str(a), "--json").json["result"] == {"pages": 3}
    r = cli("release", str(b), "--token", cb["token"], "--outcome", "failed",
            "--error", "boom", "--retry-in", "12.5", "--json")
    ok(r)
    assert r.json["status"] == "pending" and r.json["error"] == "boom"
    assert r.json["run_after"] == T0_MS + 12_500
    r = cli("release", str(c), "--token", cc["token"], "--outcome", "failed")
    ok(r)
    assert r.out.startswith(f"item {c}: pending, claimable ")
    r = cli("release", str(d), "--token", cd["token"], "--outcome", "failed", "--no-retry",
            "--json")
    assert r.json["status"] == "failed"
    r = cli("release", str(e), "--token", ce["token"], "--outcome", "requeue", "--json")
    assert r.json["status"] == "pending" and r.json["run_after"] == T0_MS
    # released: the token is spent
    one_error_line(cli("release", str(a), "--token", ca["token"], "--outcome", "succeeded"), 4)
    one_error_line(cli("release", str(a), "--token", ca["token"], "--outcome", "maybe"), 2)


def test_checkpoint_and_verify(cli, clock):
    a = submit(cli)
    c = claim(cli, "--ttl", "10")
    r = cli("checkpoint", str(a), "--token", c["token"], "--data", '{"page": 7}')
    ok(r)
    assert r.out.strip() == f"item {a}: checkpoint saved"
    r = cli("checkpoint", str(a), "--token", c["token"], "--data", '{"page": 8}', "--json")
    assert r.json["fence"] == c["fence"] and r.json["checkpoint"] == {"page": 8}
    assert cli("show", str(a), "--json").json["checkpoint"] == {"page": 8}
    one_error_line(cli("checkpoint", str(a), "--token", "bad", "--data", "1"), 4)

    r = cli("verify", str(a), "--token", c["token"])
    ok(r)
    assert r.out.strip() == f"valid: item {a} is running, fence {c['fence']}"
    r = cli("verify", str(a), "--token", c["token"], "--json")
    assert r.code == 0 and r.json == {"valid": True, "fence": c["fence"], "status": "running"}
    r = cli("verify", str(a), "--token", "bad")
    assert r.code == 4 and r.out.startswith("not valid")
    clock.tick(10)
    r = cli("verify", str(a), "--token", c["token"], "--json")
    assert r.code == 4 and r.json["valid"] is False
    one_error_line(cli("verify", "999", "--token", "x"), 5)


def test_recover_and_resolve(cli, clock):
    idem = submit(cli)
    unsafe = submit(cli, "--effect", "unsafe")
    c1 = claim(cli, "--ttl", "5")
    claim(cli, "--ttl", "5")
    clock.tick(6)
    r = cli("status", "--json")
    assert [x["id"] for x in r.json["expired_leases"]] == [idem, unsafe]
    r = cli("recover", "--dry-run")
    ok(r)
    assert r.out.splitlines()[0] == "would recover 2 item(s)"
    assert "-> pending" in r.out and "-> unknown" in r.out
    r = cli("recover", "--dry-run", "--json")
    assert r.json["dry_run"] is True and r.json["count"] == 2
    assert cli("show", str(idem), "--json").json["status"] == "running"  # untouched
    r = cli("recover", "--json")
    ok(r)
    assert {x["id"]: x["status"] for x in r.json["recovered"]} == {idem: "pending",
                                                                   unsafe: "unknown"}
    r = cli("recover")
    ok(r)
    assert r.out.strip() == "recovered 0 item(s)"
    one_error_line(cli("heartbeat", str(idem), "--token", c1["token"]), 4)

    one_error_line(cli("resolve", str(idem), "--outcome", "succeeded"), 6)
    r = cli("resolve", str(unsafe), "--outcome", "retry")
    ok(r)
    assert r.out.strip() == f"item {unsafe}: pending"
    one_error_line(cli("resolve", str(unsafe), "--outcome", "bogus"), 2)
    one_error_line(cli("resolve", "999", "--outcome", "retry"), 5)


def test_cancel(cli):
    a = submit(cli)
    r = cli("cancel", str(a))
    ok(r)
    assert r.out.strip() == f"item {a}: cancelled"
    err = one_error_line(cli("cancel", str(a)), 6)
    assert "cancelled" in err
    b = submit(cli)
    claim(cli)
    r = cli("cancel", str(b), "--json")
    ok(r)
    assert r.json["status"] == "running" and r.json["cancel_requested"] is True
    one_error_line(cli("cancel", "999"), 5)
