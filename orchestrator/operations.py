"""Every operation's engine function by name: the table the API and the daemon run.

Derived from ``registry``; importing this module imports the engine (the rules, the
store, APSW), which the CLI and the socket client never need.
"""

from collections.abc import Callable
from typing import Any

from .registry import BY_NAME

#: operation name -> (engine function, writes?)
OPERATIONS: dict[str, tuple[Callable[..., Any], bool]] = {
    name: (op.function, op.writes) for name, op in BY_NAME.items()}
