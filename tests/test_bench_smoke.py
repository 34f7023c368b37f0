"""The benchmark keeps working: every section runs with tiny sizes (figures not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick",
                        "--systems", "raw,embedded,daemon", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["cycle"]
    assert {(r["key"], r["sync"], r["workers"]) for r in rows} == {
        (k, s, w) for k in ("raw", "embedded", "daemon") for s in ("full", "normal")
        for w in (1, 4)}
    for r in rows:  # correctness is checked even where speed is not
        assert r["twice"] == 0 and r["never"] == 0, r
        assert r["median"] > 0 and r["synchronous"] == r["sync"].upper(), r
    assert report["recovery"]["expired_leases"] == 200
    assert [s["pending"] for s in report["scale"]] == [100, 1000]
    assert report["enqueue"]["items"] == 2000
    assert report["memory"]["cycles"] == 400
    assert [(r["mode"], r["items"]) for r in report["work"]] == [("daemon", 40), ("embedded", 40)]
