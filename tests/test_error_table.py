"""Wire error codes are decided in one place: the table in orchestrator/errors.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "orchestrator" / "errors.py"
#: JSON-RPC's reserved codes (-32768..-32000) and orch's own (1001-1009), as numbers
#: in code, strings or help text.
WIRE_CODE = re.compile(r"(?<![\w.])(-32\d{3}|100[1-9])(?!\d)")


def test_no_wire_code_is_written_outside_the_error_table():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sorted((ROOT / "orchestrator").rglob("*.py")) if path != TABLE
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if WIRE_CODE.search(line)]
    assert not found, "wire codes outside errors.py (name them there):\n" + "\n".join(found)
    # The pattern does find the codes where they belong.
    in_table = set(WIRE_CODE.findall(TABLE.read_text()))
    assert {"-32700", "-32600", "-32601", "-32602", "-32603", "1001", "1002", "1003", "1004",
            "1005"} <= in_table
