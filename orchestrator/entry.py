"""The ``orch`` program: the click-free fast path when it applies, else the full CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from . import fastpath

    code = fastpath.run(sys.argv[1:] if argv is None else argv)
    if code is None:
        from .cli import run

        code = run(argv)
    sys.exit(code)
