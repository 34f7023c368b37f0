"""``orch backup DEST``: a consistent, private copy that passes doctor, made while another
process writes; an existing destination is refused, never overwritten."""

from __future__ import annotations

from conftest import ok, one_error_line, submit

from orchestrator import Orchestrator


def test_backup(cli, tmp_path):
    submit(cli, "--payload", '"keep me"')
    dest = tmp_path / "copy.db"
    r = cli("backup", str(dest))
    ok(r)
    assert str(dest) in r.out
    with Orchestrator(dest) as copy:
        assert [i["payload"] for i in copy.list_tasks()] == ["keep me"]
        assert copy.doctor()["ok"]
    one_error_line(cli("backup", str(dest)), 2)  # never overwrites
    dest2 = tmp_path / "copy2.db"
    r = cli("backup", str(dest2), "--json")
    ok(r)
    assert r.json == {"backup": str(dest2)}
