"""``orch doctor`` on a damaged file: one line, exit 1, and the way to recover."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from conftest import one_error_line, orch_process

from orchestrator import Orchestrator

# --- a damaged file ------------------------------------------------------------------


@pytest.fixture
def filled_db(tmp_path: Path) -> Path:
    """A database of a few hundred pages, closed (its WAL folded in)."""
    db = tmp_path / "full.db"
    with Orchestrator(db) as o:
        o.submit_many([{"payload": {"i": i, "pad": "x" * 300}} for i in range(2000)])
        for _ in range(100):
            c = o.claim_task("w", ttl=30)
            o.release_task(c["id"], c["token"], "succeeded")
    assert not Path(f"{db}-wal").exists()
    return db


def test_doctor_on_a_damaged_page_says_so_in_one_line(filled_db, tmp_path):
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(filled_db, damaged)  # no connection has the copy open
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096 + 100)  # into a page in the middle of the file
        f.write(random.Random(1).randbytes(2000))
    for args in (("doctor",), ("doctor", "--json")):
        p = orch_process(*args, db=damaged)
        err = one_error_line(p, 1)
        assert f"database {damaged} is damaged" in err, err
        assert "backup" in err and f"sqlite3 {damaged} .recover" in err, err
        assert "Traceback" not in p.stderr
    assert orch_process("doctor", db=filled_db).returncode == 0


def test_doctor_on_a_file_that_is_not_a_database(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are not the pages you are looking for\n" * 300)
    before = junk.read_bytes()
    p = orch_process("doctor", db=junk)
    err = one_error_line(p, 1)
    assert f"database {junk} is damaged or not a database" in err, err
    assert "backup" in err, err
    assert junk.read_bytes() == before
