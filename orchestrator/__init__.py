"""orch: a per-machine task-lease orchestrator for local AI agents."""

from .api import Operations, Orchestrator
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
