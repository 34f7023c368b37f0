"""Using the command line: --db and --json before or after the command, help for every
command and option, choices offered and refused in one clean line, every failing exit
code with exactly one ``orch: error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from conftest import ROOT, CliResult, claim, ok, one_error_line, submit

from orchestrator import InvalidInput
from orchestrator.cli import cli as cli_group
from orchestrator.cli import run
from orchestrator.validate import KINDS, SUBMIT_KINDS


@pytest.fixture
def cli_without_db(capsys):
    """Run ``orch`` in-process with exactly these arguments (no --db added)."""
    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(list(args))
        got = capsys.readouterr()
        return CliResult(code, got.out, got.err)
    return invoke


def test_db_and_json_before_or_after_the_command(cli_without_db, tmp_path):
    first = tmp_path / "one.db"
    second = tmp_path / "two.db"
    r = cli_without_db("--db", str(first), "--json", "submit", "--payload", "1")
    ok(r)
    assert r.json["id"] == 1
    r = cli_without_db("submit", "--payload", "2", "--db", str(second), "--json")
    ok(r)
    assert r.json["id"] == 1 and second.exists()
    r = cli_without_db("submit", "--db", str(first), "--payload", "3")
    ok(r)
    assert r.out.startswith("submitted: item 2")  # text without --json
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.out)
    r = cli_without_db("ls", "--json", "--db", str(first))
    assert [i["payload"] for i in r.json] == [3, 1]
    r = cli_without_db("--json", "ls", "--db", str(second))
    assert [i["payload"] for i in r.json] == [2]
    r = cli_without_db("--db", str(second), "ls", "--db", str(first), "--json")
    assert [i["payload"] for i in r.json] == [3, 1]  # the nearer --db wins
    # the default database was never touched
    default = tmp_path / "home" / "data" / "orchestrator.db"
    assert not default.exists()
    assert not (Path.cwd() / "--json").exists()


def _all_commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield prefix + name, cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + name + " ")


def test_every_command_has_help(cli):
    names = [n for n, _ in _all_commands(cli_group)]
    for expected in ("init", "submit", "claim", "heartbeat", "release", "recover", "cancel",
                     "checkpoint", "resolve", "verify", "status", "ls", "show", "events",
                     "doctor", "backup"):
        assert expected in names
    assert (cli_group.help or "").strip()
    for name, cmd in _all_commands(cli_group):
        assert (cmd.help or "").strip(), f"{name} has no help"
        assert (cmd.get_short_help_str() or "").strip(), name
        r = cli(*name.split(), "--help")
        assert r.code == 0, (name, r)
        assert f"orch {name}" in r.out and "Usage:" in r.out
        if not isinstance(cmd, click.Group):  # the common options, after the name
            assert "--db" in r.out and "--json" in r.out, name
    r = cli("--help")
    assert r.code == 0 and all(n in r.out for n in cli_group.commands)


def test_every_option_has_help(cli):
    for name, cmd in [("", cli_group), *_all_commands(cli_group)]:
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"orch {name} {param.opts[0]}: no help"
        r = cli(*name.split(), "--help")
        assert r.code == 0 and "jq" not in r.out, (name, r)  # no example needs a tool not named


def test_submit_offers_only_the_kinds_it_accepts(cli, orch):
    for kind in KINDS:
        if kind in SUBMIT_KINDS:
            assert orch.submit_task(kind=kind)["kind"] == kind
        else:
            with pytest.raises(InvalidInput, match="under its parent's lease"):
                orch.submit_task(kind=kind)
    r = cli("submit", "--help")
    assert "[task|session]" in r.out and "goal|" not in r.out, r.out
    assert "orch goal add and orch tool exec" in " ".join(r.out.split())
    assert one_error_line(cli("submit", "--kind", "goal"), 2) == (
        "orch: error: Invalid value for '--kind': 'goal' is not one of 'task', 'session'.\n")


def test_recover_help_gives_the_installed_cron_line(cli):
    cron = [line for line in (ROOT / "scripts" / "orch-recover.cron").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(cron) == 1 and cron[0].startswith('* * * * * "$HOME/.local/bin/orch" recover')
    assert cron[0] in [line.strip() for line in cli("recover", "--help").out.splitlines()]


@pytest.mark.parametrize("args,message", [
    (["release", "1", "--token", "t"],
     "Missing option '--outcome'. Choose from: succeeded, failed, cancelled, requeue"),
    (["resolve", "1"],
     "Missing option '--outcome'. Choose from: succeeded, failed, retry, cancelled"),
    (["release", "1", "--token", "t", "--outcome", "done"],
     "Invalid value for '--outcome': 'done' is not one of "
     + "'succeeded', 'failed', 'cancelled', 'requeue'."),
    (["ls", "--status", "busy"],
     "Invalid value for '--status': 'busy' is not one of "
     + "'pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'unknown'."),
    (["claim", "--worker", "w", "--kind", "job"],
     "Invalid value for '--kind': 'job' is not one of 'task', 'session'."),
    (["submit", "--effect", "maybe"],
     "Invalid value for '--effect': 'maybe' is not one of 'idempotent', 'unsafe'."),
    (["daemon", "--synchronous", "off"],
     "Invalid value for '--synchronous': 'off' is not one of 'full', 'normal'."),
])
def test_choice_errors_are_clean_single_lines(cli, args, message):
    assert one_error_line(cli(*args), 2) == f"orch: error: {message}\n"


@pytest.mark.parametrize("args,code", [
    (["frobnicate"], 2),
    (["claim"], 2),  # --worker missing
    (["submit", "--priority", "high"], 2),
    (["submit", "--nope"], 2),
    (["show", "abc"], 2),
    (["show", "12345"], 5),
    (["release", "1", "--token", "t", "--outcome", "succeeded"], 5),
    (["submit", "--payload", "{"], 2),
    (["checkpoint", "1", "--token", "t", "--data", "1"], 5),
])
def test_errors_are_one_line(cli, args, code):
    cli("init")
    one_error_line(cli(*args), code)


def test_errors_from_every_failing_exit_code(cli, clock):
    a = submit(cli)
    c = claim(cli, "--ttl", "1")
    clock.tick(2)
    one_error_line(cli("heartbeat", str(a), "--token", c["token"]), 4)
    one_error_line(cli("claim", "--worker", "w", "--ttl", "0"), 2)
    cli("recover")
    one_error_line(cli("resolve", str(a), "--outcome", "retry"), 6)
    one_error_line(cli("cancel", "77"), 5)
