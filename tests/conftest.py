"""Shared fixtures: real database files in tmp_path, the CLI in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.cli import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "orchestrator.db"


@pytest.fixture
def orch(db_path: Path):
    with Orchestrator(db_path) as o:
        yield o


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch the real ~/.openclaw, or find a daemon of the person running them.
    monkeypatch.setenv("OPENCLAW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCH_DB", raising=False)
    monkeypatch.delenv("ORCH_SOCKET", raising=False)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def cli(db_path: Path, capsys: pytest.CaptureFixture):
    """Run ``orch`` in-process against db_path: cli("submit", "--payload", "1")."""
    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(["--db", str(db_path), *args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return invoke


def orch_process(*args: str, db: Path | None = None, env: dict | None = None,
                 timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``orch`` as a real subprocess (exit codes, signals, several processes)."""
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "orchestrator", *(["--db", str(db)] if db else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)


@pytest.fixture
def orch_cli(db_path: Path):
    def invoke(*args: str, **kw) -> subprocess.CompletedProcess:
        return orch_process(*args, db=db_path, **kw)
    return invoke
