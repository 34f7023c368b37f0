"""One round trip each way in: the CLI embedded, and a client through the daemon."""

from __future__ import annotations


def test_cli_round_trip(cli, orch_cli):
    r = cli("submit", "--payload", '{"n": 1}', "--json")
    assert r.code == 0 and r.json["created"] is True
    p = orch_cli("claim", "--worker", "w1")
    assert p.returncode == 0, p.stderr


def test_daemon_round_trip(start_daemon):
    d = start_daemon()
    with d.client() as c:
        item = c.submit_task({"n": 1})
        claim = c.claim_task("w1")
        assert claim["id"] == item["id"]
        assert c.release_task(claim["id"], claim["token"], "succeeded")["status"] == "succeeded"
    assert d.stop() == 0
    assert not d.sock.exists()
