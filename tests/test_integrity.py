"""The file keeps its history honest: the event log refuses UPDATE and DELETE, and
``orch doctor`` names what was changed behind orch's back (an item, an event, a link), or
says in one line that the file is damaged or not a database at all."""

from __future__ import annotations

import apsw
from conftest import claim, ok, submit


def test_doctor(cli, db_path):
    a = submit(cli)
    claim(cli)
    r = cli("doctor")
    ok(r)
    assert r.out.startswith("ok: 1 items, 2 events")
    r = cli("doctor", "--json")
    assert r.code == 0 and r.json["ok"] is True and r.json["problems"] == []
    # tamper with a row behind orch's back: doctor must notice and exit 1
    conn = apsw.Connection(str(db_path))
    conn.execute("UPDATE items SET priority = 99 WHERE id = ?", (a,))
    conn.close()
    r = cli("doctor")
    assert r.code == 1
    assert "problem" in r.out and "priority" in r.out
    r = cli("doctor", "--json")
    assert r.code == 1 and r.json["ok"] is False
    assert any("priority" in p for p in r.json["problems"])
