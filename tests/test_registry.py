"""One record per operation: every place that serves an operation agrees with the registry.

An operation added to the registry without its engine function, API method, command
or README entry, or served somewhere without a record, fails here by name. The CLI's
socket path stays light: it loads the registry but never the engine.
"""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import api, operations, protocol, registry, validate
from orchestrator.cli import cli as cli_group
from orchestrator.interface import Operations

ROOT = Path(__file__).resolve().parent.parent
OPS = list(registry.BY_NAME.values())
#: Operations methods that are not operations: helpers built on them.
NOT_OPERATIONS = {"hold", "clone", "close"}


def section(readme: str, english_heading: str) -> str:
    """The section of ``readme`` at the place of ``english_heading`` in README.md (the
    Korean README translates headings but keeps them in step)."""
    en_headings = re.findall(r"^## .*$", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    index = en_headings.index(english_heading)
    parts = re.split(r"^## .*$", (ROOT / readme).read_text(), flags=re.MULTILINE)
    return parts[index + 1]


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(w.capitalize() for w in rest)


def api_params(op: registry.Operation) -> set[str]:
    method = getattr(Operations, op.name)
    return {p for p in inspect.signature(method).parameters if p != "self"}


def cli_command(path: str):
    command = cli_group
    for word in path.split():
        command = command.commands[word]
    return command


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_each_operation_is_served_everywhere(op: registry.Operation) -> None:
    # the wire: camelCase of the API name, both ways
    assert op.wire == camel(op.name)
    assert protocol.METHODS[op.wire] == op.name and protocol.OP_METHOD[op.name] == op.wire
    # its parameters: the API method, the rules and the engine function take the same
    assert isinstance(op.params, validate.Spec)
    assert api_params(op) == set(op.params.fields), "Operations method and registry differ"
    fn = op.function
    engine = [p for p in list(inspect.signature(fn).parameters)[2:] if not p.startswith("_")]
    assert set(engine) == set(op.params.fields), f"{op.engine} and registry differ"
    assert operations.OPERATIONS[op.name] == (fn, op.writes)
    # its command, or why there is none
    if op.cli is None:
        assert op.no_cli, f"{op.name}: give the command that calls it, or say why none does"
    else:
        callback = cli_command(op.cli).callback
        source = inspect.getsource(getattr(callback, "__wrapped__", callback))
        assert f".{op.name}(" in source, f"orch {op.cli} does not call {op.name}"


@pytest.mark.parametrize("readme", ["README.md", "README.ko.md"])
def test_each_operation_is_in_the_readmes(readme: str) -> None:
    protocol_section = section(readme, "## The daemon's protocol")
    methods = next(p for p in protocol_section.split("\n\n") if "`submitTask`" in p)
    listed = set(re.findall(r"`([a-z][A-Za-z]*)`", methods))  # not the snake_case names
    assert listed == set(protocol.METHODS), "the protocol section's method list is stale"
    cli_section = section(readme, "## The CLI")
    for op in OPS:
        if op.cli is not None:
            assert f"`orch {op.cli}" in cli_section or f"· orch {op.cli}" in cli_section, \
                f"{readme}: orch {op.cli} is missing from the CLI section"


def test_nothing_is_served_without_a_record() -> None:
    methods = {name for name, _ in inspect.getmembers(Operations, inspect.isfunction)
               if not name.startswith("_")}
    assert methods - NOT_OPERATIONS == set(registry.BY_NAME)
    assert set(protocol.METHODS.values()) == set(registry.BY_NAME)
    assert set(operations.OPERATIONS) == set(registry.BY_NAME)


def test_the_daemon_tables_come_from_the_records() -> None:
    assert api.WAITS == {op.name: op.settled for op in OPS if op.settled is not None}
    assert registry.FEEDS == {"submit_task", "submit_many", "release_task",
                              "release_and_claim", "stale_recovery", "resolve_task",
                              "retry_task"}
    assert registry.WAITED == {"claim_task", "execute_tool_idempotent", "release_and_claim"}
    for op in OPS:
        # whatever may wait takes ``wait``; whatever parks may wait
        assert (op.settled is not None or op.parks) == ("wait" in op.params.fields), op.name


#: What ``orch`` may load when a daemon answers: no engine, no APSW, no tenacity.
SOCKET_PATH_MODULES = {
    "orchestrator", "orchestrator.__main__", "orchestrator.cli", "orchestrator.client",
    "orchestrator.clock", "orchestrator.defaults", "orchestrator.entry", "orchestrator.errors",
    "orchestrator.fastpath",
    "orchestrator.formatting", "orchestrator.interface", "orchestrator.model",
    "orchestrator.paths", "orchestrator.protocol", "orchestrator.registry",
    "orchestrator.validate",
}


def test_the_socket_path_loads_no_engine(start_daemon) -> None:
    d = start_daemon()
    commands = [["submit", "--payload", "1"], ["claim", "--worker", "w"], ["ls"],
                ["status"], ["why", "1"], ["events"]]
    for args in commands:
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator",
                            "--db", str(d.db), "--socket", str(d.sock), *args],
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr[-2000:]
        loaded = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines()
                  if line.startswith("import time:") and "|" in line}
        ours = {m for m in loaded if m.split(".")[0] == "orchestrator"}
        assert ours <= SOCKET_PATH_MODULES, (args, sorted(ours - SOCKET_PATH_MODULES))
        assert not loaded & {"apsw", "tenacity", "loguru"}, \
            (args, sorted(loaded & {"apsw", "tenacity", "loguru"}))
