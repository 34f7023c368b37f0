"""scripts/install-service.sh in a scratch HOME, with systemctl and crontab as recording stubs.

PATH holds only the stubs, a fake orch and links to the few standard tools the script
uses, so a machine's own crontab or orch cannot leak in.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-service.sh"
TOOLS = ("sh", "dirname", "basename", "mkdir", "chmod", "sed", "grep", "head", "cat")

SYSTEMCTL = """#!/bin/sh
echo "$*" >>"$STUBS_LOG/systemctl"
case "$*" in *status*) echo "* orch.service - orch daemon (stub)";; esac
"""
CRONTAB = """#!/bin/sh
echo "$*" >>"$STUBS_LOG/crontab"
if [ "$1" = -l ]; then
  [ -f "$STUBS_LOG/crontab.txt" ] || { echo "no crontab for you" >&2; exit 1; }
  cat "$STUBS_LOG/crontab.txt"
else
  cat >"$STUBS_LOG/crontab.txt"
fi
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class Machine:
    """A scratch HOME and PATH; ``run()`` runs the script there."""

    def __init__(self, tmp: Path, *, crontab: bool, orch_on_path: bool = True):
        self.home = tmp / "home"
        self.home.mkdir()
        self.log = tmp / "log"
        self.log.mkdir()
        tools = tmp / "tools"
        tools.mkdir()
        for name in TOOLS:
            found = shutil.which(name)
            assert found, f"{name} is needed to run the script"
            (tools / name).symlink_to(found)
        stubs = tmp / "stubs"
        executable(stubs / "systemctl", SYSTEMCTL)
        if crontab:
            executable(stubs / "crontab", CRONTAB)
        self.orch = executable(tmp / "venv" / "bin" / "orch", "#!/bin/sh\nexit 0\n")
        path = [stubs] + ([self.orch.parent] if orch_on_path else []) + [tools]
        self.env = {"HOME": str(self.home), "PATH": os.pathsep.join(map(str, path)),
                    "STUBS_LOG": str(self.log)}
        self.unit = self.home / ".config" / "systemd" / "user" / "orch.service"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=30, check=False)

    def calls(self, stub: str) -> list[str]:
        f = self.log / stub
        return f.read_text().splitlines() if f.exists() else []

    @property
    def crontab(self) -> str:
        return (self.log / "crontab.txt").read_text()

    def cron_line(self, orch: Path) -> str:
        return (f'* * * * * "{orch}" recover >/dev/null '
                '2>>"$HOME/.openclaw/logs/recover.log"')


def expected_unit(orch: Path) -> str:
    lines = (ROOT / "scripts" / "orch.service").read_text().splitlines(keepends=True)
    return "".join(f"ExecStart={orch} daemon\n" if line.startswith("ExecStart=") else line
                   for line in lines)


def test_installs_the_unit_with_the_orch_on_path_and_the_cron_line(tmp_path):
    m = Machine(tmp_path, crontab=True)
    p = m.run()
    assert p.returncode == 0, p.stderr
    assert m.unit.read_text() == expected_unit(m.orch)
    assert m.calls("systemctl") == ["--user daemon-reload", "--user enable --now orch.service",
                                    "--user --no-pager status orch.service"]
    assert m.crontab == m.cron_line(m.orch) + "\n"
    assert stat.S_IMODE((m.home / ".openclaw").stat().st_mode) == 0o700
    # Again: nothing doubles up.
    p = m.run()
    assert p.returncode == 0 and "already installed" in p.stdout, p
    assert m.crontab == m.cron_line(m.orch) + "\n"


def test_keeps_other_cron_lines_and_replaces_an_older_orch_line(tmp_path):
    m = Machine(tmp_path, crontab=True)
    (m.log / "crontab.txt").write_text(
        "MAILTO=me\n0 3 * * * backup.sh\n"
        '* * * * * "/old/venv/bin/orch" recover >/dev/null 2>>"$HOME/x.log"\n')
    p = m.run()
    assert p.returncode == 0, p.stderr
    assert m.crontab == f"MAILTO=me\n0 3 * * * backup.sh\n{m.cron_line(m.orch)}\n"


def test_without_crontab_installs_the_unit_and_prints_the_line(tmp_path):
    m = Machine(tmp_path, crontab=False)
    p = m.run()
    assert p.returncode == 0, p.stderr
    assert m.unit.read_text() == expected_unit(m.orch)
    assert "--user enable --now orch.service" in m.calls("systemctl")
    assert "crontab not found" in p.stderr and "Add this line to your crontab" in p.stderr
    assert m.cron_line(m.orch) in p.stdout.splitlines()


def test_refuses_when_orch_is_missing(tmp_path):
    m = Machine(tmp_path, crontab=True, orch_on_path=False)
    p = m.run()
    assert p.returncode == 1
    assert p.stderr.startswith("install-service.sh: orch is not on PATH;"), p.stderr
    assert p.stderr.count("\n") == 1 and p.stdout == ""
    assert not m.unit.exists() and m.calls("systemctl") == [] and m.calls("crontab") == []
    p = m.run(str(tmp_path / "nowhere" / "orch"))
    assert p.returncode == 1 and "is not an executable file" in p.stderr
    assert not m.unit.exists() and m.calls("systemctl") == []


def test_takes_orch_as_an_argument(tmp_path):
    m = Machine(tmp_path, crontab=True, orch_on_path=False)
    other = executable(tmp_path / "opt" / "orch", "#!/bin/sh\n")
    p = subprocess.run([str(SCRIPT), "../opt/orch"], env=m.env, capture_output=True,
                       text=True, timeout=30, check=False, cwd=m.home)
    assert p.returncode == 0, p.stderr
    assert m.unit.read_text() == expected_unit(other)
    assert m.crontab == m.cron_line(other) + "\n"
    odd = executable(tmp_path / "my tools" / "orch", "#!/bin/sh\n")
    p = m.run(str(odd))
    assert p.returncode == 1 and "special characters" in p.stderr


def test_the_written_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (apt-get install systemd)")
    m = Machine(tmp_path, crontab=False)
    assert m.run().returncode == 0
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    p = subprocess.run([analyze, "--user", "verify", str(m.unit)],
                       env={**m.env, "PATH": os.environ["PATH"],
                            "XDG_RUNTIME_DIR": str(runtime)},
                       capture_output=True, text=True, timeout=60, check=False)
    assert (p.returncode, p.stderr) == (0, ""), p
