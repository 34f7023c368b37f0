"""orch: a per-machine task-lease orchestrator for local AI agents."""

from typing import TYPE_CHECKING

from .errors import (
                     Conflict,
                     Corrupt,
                     InvalidInput,
                     LeaseLost,
                     LimitExceeded,
                     NotFound,
                     OrchError,
                     OutcomeUnknown,
                     SchemaTooNew,
                     Unavailable,
)

if TYPE_CHECKING:
    from .api import Orchestrator
    from .interface import Operations

__version__ = "0.1.0"
__all__ = [
                     "Conflict",
                     "Corrupt",
                     "InvalidInput",
                     "LeaseLost",
                     "LimitExceeded",
                     "NotFound",
                     "Operations",
                     "OrchError",
                     "Orchestrator",
                     "OutcomeUnknown",
                     "SchemaTooNew",
                     "Unavailable",
]


def __getattr__(name: str):
    # Loaded on first use: the CLI and the socket client need neither the engine nor
    # APSW, and importing them would cost every `orch` command its start-up time.
    if name == "Orchestrator":
        from .api import Orchestrator
        return Orchestrator
    if name == "Operations":
        from .interface import Operations
        return Operations
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
