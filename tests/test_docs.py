"""The READMEs stay true: the scripts they show are the scripts we ship and test."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "README.ko.md"]


def code_blocks(path: Path) -> list[str]:
    text = path if isinstance(path, str) else path.read_text()
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
@pytest.mark.parametrize("script", ["scripts/worker.sh", "scripts/agent_example.py"])
def test_readme_shows_the_shipped_script(readme: Path, script: str) -> None:
    assert (ROOT / script).read_text() in code_blocks(readme)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_readme_gives_the_ci_test_command(readme: Path) -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    first_screen = "\n".join(readme.read_text().splitlines()[:30])
    assert ci in first_screen
    assert ".venv/bin/orch daemon" in first_screen


def test_both_readmes_have_the_same_shape() -> None:
    en, ko = READMES[0].read_text(), READMES[1].read_text()
    assert code_blocks(en) == code_blocks(ko)
    assert len(re.findall(r"^#+ ", en, flags=re.MULTILINE)) == len(re.findall(r"^#+ ", ko, flags=re.MULTILINE))
    assert en.count("\n|") == ko.count("\n|")


def test_the_socket_example_runs_twice(short_tmp: Path, start_daemon) -> None:
    """Run as written (HOME pointing at a fresh home whose daemon serves it), twice."""
    import os
    import subprocess

    block = next(b for b in code_blocks(READMES[0]) if "startSession" in b)
    home = short_tmp / "h"
    start_daemon(db=home / ".openclaw" / "data" / "orchestrator.db",
                 sock=home / ".openclaw" / "run" / "orch.sock")
    for _ in range(2):
        p = subprocess.run(["sh", "-c", block], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HOME": str(home)}, check=False)
        assert p.returncode == 0, p.stderr
        ok, stale = p.stdout.splitlines()
        assert "'status': 'succeeded'" in ok
        assert "'code': 1001" in stale and "lease_lost" in stale


def test_license_file_matches_pyproject() -> None:
    import tomllib

    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert license_ == {"text": "MIT"}
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the orch authors\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
