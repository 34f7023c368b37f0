def test_daemon_round_trip(start_daemon):
    d = start_daemon()
    with d.client() as c:
        item = c.submit_task({"n": 1})
        claim = c.claim_task("w1")
        assert claim["id"] == item["id"]
        assert c.release_task(claim["id"], claim["token"], "succeeded")["status"] == "succeeded"
    assert d.stop() == 0
    assert not d.sock.exists()
