"""``orch backup DEST``: a consistent, private copy that passes doctor, made while another
process writes; an existing destination is refused, never overwritten."""

from __future__ import annotations

import pytest
from conftest import (
    fetch_all,
    file_mode,
    ok,
    one_error_line,
    orch_process,
    spawn,
    sqlite_connection,
    submit,
)

from orchestrator import Orchestrator
from orchestrator.store import SCHEMA_VERSION


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


@pytest.mark.slow
def test_backup_while_another_process_writes(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        o.submit_many([{"payload": {"n": i, "pad": "y" * 500}} for i in range(300)])
    writer = spawn("burst_writer.py", str(db_path), "bw", log=tmp_path / "writer.err")
    dests = []
    try:
        for _ in range(20):  # the writer is under way
            assert writer.stdout.readline(), (tmp_path / "writer.err").read_text()
        for k in range(3):
            dest = tmp_path / "backups" / f"copy-{k}.db"
            p = orch_process("backup", str(dest), db=db_path)
            assert p.returncode == 0, p.stderr
            assert writer.poll() is None  # it kept writing throughout
            dests.append(dest)
            for _ in range(5):
                assert writer.stdout.readline()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    with Orchestrator(db_path) as o:
        final = o.status()["counts"]
    sizes = []
    for dest in dests:
        assert file_mode(dest) == 0o600
        p = orch_process("--db", str(dest), "doctor")
        assert p.returncode == 0, p.stdout + p.stderr
        conn = sqlite_connection(dest)
        assert fetch_all(conn, "PRAGMA integrity_check") == [("ok",)]
        assert fetch_all(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        n = fetch_all(conn, "SELECT count(*) FROM items")[0][0]
        conn.close()
        assert n >= 300
        sizes.append(n)
    assert sizes == sorted(sizes)  # later copies saw later states
    assert sizes[-1] <= sum(final.values())
    # An existing destination is refused, not overwritten.
    p = orch_process("backup", str(dests[0]), db=db_path)
    assert p.returncode == 2 and "exists" in p.stderr
