"""The PostgreSQL benchmark's orch rows keep working with tiny sizes (figures not checked;
the peers it compares with are not installed here and not run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pg_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_pg_runs_orch_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pg.py"), "--quick",
                        "--pg", pg_server(), "--json", str(out),
                        "--rows", "orch-daemon:1,orch-2daemons:2,orch-embedded:2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["key"], r["workers"]) for r in rows] == [
        ("orch-daemon", 1), ("orch-2daemons", 2), ("orch-embedded", 2)]
    for r in rows:  # correctness is checked even where speed is not
        assert r["errors"] == [] and r["duplicates"] == 0, r
        assert r["delivered"] > 0 and r["done"] == r["delivered"], r
    assert "| orch 2 daemons | 2 daemons x 1 |" in p.stdout
