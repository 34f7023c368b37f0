"""``orch why``: each event type's sentence, word for word, at frozen times, and the
plain-words answer for each status with real time.

Every fact must be one an event recorded: who held the lease and under which fence,
when its lease ended and when recovery took it, what a release or a resolve said.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from conftest import T0

RESOLVE = "Resolve with orch resolve {} --outcome succeeded|failed|retry|cancelled"


def at(seconds: float) -> str:
    """The ISO time ``seconds`` after T0, as why prints it."""
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


@pytest.fixture
def why(orch, cli):
    """The explanation of an item, checked to be what ``orch why`` prints."""
    def explain(item_id: int) -> str:
        text = orch.explain_task(item_id)["text"]
        r = cli("why", str(item_id))
        assert (r.code, r.out, r.err) == (0, text + "\n", ""), r
        return text
    return explain


def test_submitted(orch, why, clock):
    a = orch.submit_task(1)
    b = orch.submit_task(2, delay=5)
    assert why(a["id"]) == f"pending: submitted at {at(0)}, not claimed yet; claimable now"
    assert why(b["id"]) == (f"pending: submitted at {at(0)} to be claimable from {at(5)}, "
                            "not claimed yet; claimable in 5 s")


def test_claimed_heartbeat_checkpoint_cancel_requested(orch, why, clock):
    a = orch.submit_task(1, max_attempts=2)
    clock.tick(1)
    c = orch.claim_task("w1", ttl=30)
    held = f"running: held by w1 (fence {c['fence']}) since {at(1)} (attempt 1 of 2)"
    assert why(a["id"]) == f"{held}; lease ends in 30 s"
    clock.tick(10)
    orch.heartbeat(a["id"], c["token"])
    clock.tick(2)
    orch.checkpoint(a["id"], c["token"], {"step": 1})
    clock.tick(0.5)
    orch.cancel_task(a["id"])
    assert why(a["id"]) == (f"{held}; lease ends in 27.5 s; last heartbeat at {at(11)}; "
                            f"last checkpoint at {at(13)} (10 bytes); a cancel was requested "
                            f"at {at(13.5)}; the holder sees it on its next heartbeat")
    clock.tick(40)  # the lease ended at 41, recovery has not run yet
    assert why(a["id"]).startswith(
        f"{held}; its lease ended 12.5 s ago, at {at(41)}: the next recovery (orch recover, "
        f"or the daemon) moves it on; last heartbeat at {at(11)}")


def test_released_with_each_outcome(orch, why, clock):
    def released(outcome: str, *, queue: str, max_attempts: int = 3, cancel: bool = False,
                 **kw) -> tuple[int, str]:
        item = orch.submit_task(queue=queue, max_attempts=max_attempts)
        c = orch.claim_task("w1", queue)
        if cancel:
            orch.cancel_task(item["id"])
        clock.tick(1)
        orch.release_task(item["id"], c["token"], outcome, **kw)
        return item["id"], f"w1 (fence {c['fence']})"

    i, w = released("succeeded", queue="ok")
    assert why(i) == f"succeeded: after 1 attempt(s); {w} released it as succeeded at {at(1)}"
    i, w = released("failed", queue="retry", error="flaky", retry_in=12)
    assert why(i) == (f"pending: retry 2 of 3 after failure, claimable in 12 s; {w} released "
                      f"it as failed at {at(2)} (flaky)")
    i, w = released("failed", queue="final", error="bad input", no_retry=True)
    assert why(i) == (f"failed: final, as the release asked for no retry; {w} released it as "
                      f"failed at {at(3)} (bad input)")
    i, w = released("failed", queue="last", max_attempts=1, error="broken")
    assert why(i) == (f"dead: all 1 of 1 attempts used; {w} released it as failed at {at(4)} "
                      "(broken)")
    i, w = released("cancelled", queue="stop")
    assert why(i) == f"cancelled: by its holder; {w} released it as cancelled at {at(5)}"
    i, w = released("requeue", queue="back")
    assert why(i) == (f"pending: retry 2 of 3 after a requeue, claimable now; {w} released it "
                      f"as requeue at {at(6)}")
    i, w = released("requeue", queue="back-last", max_attempts=1)
    assert why(i) == f"dead: all 1 of 1 attempts used; {w} released it as requeue at {at(7)}"
    i, w = released("failed", queue="asked", cancel=True, error="gave up")
    assert why(i) == (f"cancelled: not retried, as a cancel was requested at {at(7)}; {w} "
                      f"released it as failed at {at(8)} (gave up)")


def test_expired_tells_the_lease_end_apart_from_the_recovery(orch, why, clock):
    def lost(queue: str, **kw) -> tuple[int, str]:
        item = orch.submit_task(queue=queue, **kw)
        c = orch.claim_task("w1", queue, ttl=10)
        return item["id"], f"w1 (fence {c['fence']})"

    retried, w1 = lost("a")
    dead, w2 = lost("b", max_attempts=1)
    unsafe, w3 = lost("c", effect="unsafe")
    cancelled, w4 = lost("d")
    orch.cancel_task(cancelled)
    clock.tick(25)  # the leases ended at 10; recovery runs at 25
    assert orch.stale_recovery()["count"] == 4
    ended = f"ended at {at(10)} and was recovered at {at(25)}"
    assert why(dead) == f"dead: all 1 of 1 attempts used; the lease of {w2} {ended}"
    assert why(unsafe) == (f"unknown: the holder of an unsafe task lost its lease, so it may "
                           f"or may not have taken effect; the lease of {w3} {ended}. "
                           + RESOLVE.format(unsafe))
    assert why(cancelled) == (f"cancelled: not retried, as a cancel was requested at {at(0)}; "
                              f"the lease of {w4} {ended}")
    clock.tick(2)  # past the backoff
    assert why(retried) == (f"pending: retry 2 of 3 after a lost lease, claimable now; "
                            f"the lease of {w1} {ended}")


def test_expired_children_say_their_parent_lost_its_lease(orch, why, clock):
    s = orch.start_session("agent", ttl=60)
    g = orch.create_goal(s["id"], s["token"])
    e = orch.execute_tool_idempotent(g["id"], g["token"], "charge", {"eur": 5})
    clock.tick(61)
    assert orch.stale_recovery()["count"] == 3
    clock.tick(2)
    sf, gf, ef = s["fence"], g["fence"], e["fence"]
    assert why(s["id"]) == (f"pending: retry 2 (no limit) after a lost lease, claimable now; "
                            f"the lease of agent (fence {sf}) ended at {at(60)} and was "
                            f"recovered at {at(61)}")
    assert why(g["id"]) == (f"pending: retry 2 (no limit) after a lost lease, claimable now; "
                            f"agent (fence {gf}) was fenced out at {at(61)} because its "
                            "parent's lease was lost")
    assert why(e["id"]) == (f"unknown: the holder of an unsafe tool execution lost its lease, "
                            f"so it may or may not have taken effect; agent (fence {ef}) was "
                            f"fenced out at {at(61)} because its parent's lease was lost. "
                            + RESOLVE.format(e["id"]))


def test_taken_over(orch, why, clock):
    s = orch.start_session("agent-1", ttl=10)
    g = orch.create_goal(s["id"], s["token"])
    clock.tick(11)  # expired, not recovered: the next holder takes it over
    r = orch.resume_session(s["id"], "agent-2", ttl=30)
    assert why(s["id"]) == (
        f"running: held by agent-2 (fence {r['fence']}) since {at(11)} (attempt 2 (no limit)), "
        f"after agent-2 took over the expired lease of agent-1 (fence {s['fence']}) at "
        f"{at(11)}; lease ends in 30 s")
    clock.tick(1)
    assert why(g["id"]) == (f"pending: retry 2 (no limit) after a lost lease, claimable now; "
                            f"agent-1 (fence {g['fence']}) was fenced out at {at(11)} because "
                            "its parent was taken over by another worker")


def test_cancelled_while_pending(orch, why, clock):
    a = orch.submit_task(queue="never")
    clock.tick(3)
    orch.cancel_task(a["id"])
    assert why(a["id"]) == (f"cancelled: before it ran; cancelled with orch cancel at {at(3)}, "
                            "while pending")
    b = orch.submit_task(queue="once")
    c = orch.claim_task("w1", "once")
    orch.release_task(b["id"], c["token"], "failed", retry_in=60)
    clock.tick(1)
    orch.cancel_task(b["id"])
    assert why(b["id"]) == (f"cancelled: after 1 attempt(s); cancelled with orch cancel at "
                            f"{at(4)}, while pending")


@pytest.mark.parametrize("outcome,status", [("succeeded", "succeeded"), ("failed", "failed"),
                                            ("cancelled", "cancelled"), ("retry", "pending")])
def test_resolved_is_told_as_a_resolve_not_a_release(orch, why, clock, outcome, status):
    a = orch.submit_task(effect="unsafe")
    c = orch.claim_task("w1", ttl=10)
    clock.tick(11)
    orch.stale_recovery()
    clock.tick(60)
    orch.resolve_task(a["id"], outcome)
    text = why(a["id"])
    assert text == (f"{status}: resolved as {outcome} with orch resolve at {at(71)}, after "
                    f"the lease of w1 (fence {c['fence']}) was lost")
    assert "released" not in text


def test_json_answer_and_unknown_item(orch, cli, clock):
    a = orch.submit_task(1)
    r = cli("--json", "why", str(a["id"]))
    assert r.json == {"id": a["id"], "kind": "task", "status": "pending",
                      "text": f"pending: submitted at {at(0)}, not claimed yet; claimable now"}
    r = cli("why", "999")
    assert (r.code, r.out, r.err) == (5, "", "orch: error: item 999 not found\n")


def test_why_text_and_json_for_each_status(orch, cli):
    def why(item_id: int) -> str:
        r = cli("why", str(item_id))
        assert r.code == 0, r
        j = cli("--json", "why", str(item_id))
        assert j.code == 0 and j.json["text"] == r.out.strip() and j.json["id"] == item_id
        return r.out.strip()

    # pending, after a failed attempt with a retry scheduled
    a = orch.submit_task({"n": 1}, queue="why")
    c = orch.claim_task("w1", ["why"], ttl=30)
    orch.release_task(a["id"], c["token"], "failed", error="flaky", retry_in=60)
    text = why(a["id"])
    assert text.startswith("pending:") and "retry 2 of 3" in text and "after failure" in text
    assert "flaky" in text and re.search(r"claimable in (59|60)(\.\d)? s", text), text
    # running
    b = orch.submit_task({"n": 2}, queue="why")
    c = orch.claim_task("w-run", ["why"], ttl=30)
    text = why(b["id"])
    assert text.startswith("running:") and "held by w-run" in text, text
    assert re.search(r"lease ends in (29|30)(\.\d)? s", text), text
    # unknown: an unsafe tool execution whose lease was lost
    s = orch.start_session("agent-why", ttl=60)
    g = orch.create_goal(s["id"], s["token"])
    e = orch.execute_tool_idempotent(g["id"], g["token"], "charge", {"eur": 5}, ttl=0.05)
    time.sleep(0.1)
    assert orch.stale_recovery()["count"] == 1
    text = why(e["id"])
    assert text.startswith("unknown:") and "tool execution" in text, text
    assert f"orch resolve {e['id']}" in text
    # dead: out of attempts
    d = orch.submit_task({"n": 3}, queue="why", max_attempts=1)
    c = orch.claim_task("w1", ["why"], ttl=30)
    orch.release_task(d["id"], c["token"], "failed", error="broken")
    text = why(d["id"])
    assert text.startswith("dead:") and "broken" in text, text
    # succeeded
    ok = orch.submit_task({"n": 4}, queue="why")
    c = orch.claim_task("w-ok", ["why"], ttl=30)
    orch.release_task(ok["id"], c["token"], "succeeded")
    text = why(ok["id"])
    assert text.startswith("succeeded:") and "w-ok" in text and "1 attempt" in text, text
    # cancelled before it ran
    x = orch.submit_task({"n": 5}, queue="why")
    orch.cancel_task(x["id"])
    text = why(x["id"])
    assert text.startswith("cancelled:") and "before it ran" in text, text
    # no such item
    r = cli("why", "999999")
    assert r.code == 5 and r.err.startswith("orch: error: ")


def test_requeued_and_actions_by_someone(orch, why, cli, clock):
    a = orch.submit_task(max_attempts=1)
    c = orch.claim_task("w1")
    orch.release_task(a["id"], c["token"], "failed", error="boom")
    clock.tick(2)
    r = cli("retry", str(a["id"]), "--by", "web:alice")
    assert (r.code, r.out) == (0, f"item {a['id']}: pending, claimable now (attempt 2 of 2 "
                                  "next)\n"), r
    assert why(a["id"]) == (f"pending: requeued by web:alice at {at(2)}, after it was dead; "
                            "next is attempt 2 of 2, claimable now")
    clock.tick(1)
    cli("cancel", str(a["id"]))
    cli("retry", str(a["id"]))
    assert why(a["id"]) == (f"pending: requeued with orch retry at {at(3)}, after it was "
                            "cancelled; next is attempt 2 of 2, claimable now")
    ok_ = cli("cancel", str(a["id"]), "--by", "ops")
    assert ok_.code == 0, ok_
    assert why(a["id"]) == f"cancelled: after 1 attempt(s); cancelled by ops at {at(3)}, while pending"
    r = cli("retry", "999")
    assert (r.code, r.err) == (5, "orch: error: item 999 not found\n")
    b = orch.submit_task()
    r = cli("retry", str(b["id"]))
    assert (r.code, r.err) == (6, f"orch: error: item {b['id']} is pending: only dead, failed "
                                  "or cancelled items are retried\n")
