def test_cli_round_trip(cli, orch_cli):
    r = cli("submit", "--payload", '{"n": 1}', "--json")
    assert r.code == 0 and r.json["created"] is True
    p = orch_cli("claim", "--worker", "w1")
    assert p.returncode == 0, p.stderr
