"""Domain errors, and the one table that maps them to CLI exit codes and JSON-RPC codes."""

from __future__ import annotations

from typing import Any


class OrchError(Exception):
    """Something went wrong in orch."""

    reason = "error"

    def __init__(self, message: str | None = None, *, data: dict[str, Any] | None = None):
        super().__init__(message or (self.__doc__ or "").strip())
        self.data = data or {}

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(OrchError):
    """Invalid input."""

    reason = "invalid"


class LimitExceeded(InvalidInput):
    """A value is over a limit."""

    reason = "limit"


class LeaseLost(OrchError):
    """The lease is lost: the token is not the item's live claim."""

    reason = "lease_lost"


class NotFound(OrchError):
    """No such item."""

    reason = "not_found"


class Conflict(OrchError):
    """The transition is not allowed from the item's current status."""

    reason = "conflict"


class Unavailable(OrchError):
    """The database or the daemon is unavailable."""

    reason = "unavailable"


class NotDelivered(Unavailable):
    """The request never reached the daemon, or the daemon turned it away unread.

    Nothing was done, so sending it again (to the daemon or to the file) is safe.
    """

    reason = "not_delivered"


class OutcomeUnknown(Unavailable):
    """The connection was lost after the request was sent; it may or may not have run."""

    reason = "outcome_unknown"


class Corrupt(OrchError):
    """The database file is damaged, or is not a database."""

    reason = "corrupt"


class SchemaTooNew(OrchError):
    """The database was written by a newer orch."""

    reason = "schema_too_new"


def internal_error(exc: BaseException) -> OrchError:
    """What a client is told of an unexpected exception (logged where it is caught)."""
    return OrchError(f"internal error: {type(exc).__name__}")


# exit codes: 0 done, 1 error, 2 usage, 3 nothing to claim, 4 lease lost, 5 not found,
# 6 conflict, 7 unavailable.  JSON-RPC: the standard codes, then 1001-1005.  HTTP (the
# web view): the status a page or JSON endpoint answers with.
EXIT_NOTHING_TO_CLAIM = 3
RPC_PARSE_ERROR = -32700
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603
RPC_LEASE_LOST = 1001
RPC_NOT_FOUND = 1002
RPC_CONFLICT = 1003
RPC_LIMIT_EXCEEDED = 1004
RPC_UNAVAILABLE = 1005

#: error class -> (CLI exit code, JSON-RPC error code, HTTP status). Subclasses are
#: listed before their bases; nothing else in orch decides these numbers.
CODES: list[tuple[type[OrchError], int, int, int]] = [
    (LimitExceeded, 2, RPC_LIMIT_EXCEEDED, 400),
    (InvalidInput, 2, RPC_INVALID_PARAMS, 400),
    (LeaseLost, 4, RPC_LEASE_LOST, 409),
    (NotFound, 5, RPC_NOT_FOUND, 404),
    (Conflict, 6, RPC_CONFLICT, 409),
    (Unavailable, 7, RPC_UNAVAILABLE, 503),
    (Corrupt, 1, RPC_UNAVAILABLE, 500),
    (OrchError, 1, RPC_INTERNAL_ERROR, 500),
]


def exit_code(exc: BaseException) -> int:
    for cls, code, _, _ in CODES:
        if isinstance(exc, cls):
            return code
    return 1


def rpc_code(exc: BaseException) -> int:
    for cls, _, code, _ in CODES:
        if isinstance(exc, cls):
            return code
    return RPC_INTERNAL_ERROR


def http_status(exc: BaseException) -> int:
    for cls, _, _, status in CODES:
        if isinstance(exc, cls):
            return status
    return 500


def from_rpc(code: int, message: str, data: dict[str, Any] | None) -> OrchError:
    """Rebuild the domain error a daemon reported, so callers see one error type per case."""
    for cls, _, rpc, _ in CODES:
        if rpc == code:
            if (data or {}).get("delivered") is False:
                cls = NotDelivered  # turned away unread: the caller may send it again
            return cls(message, data=data)
    if code in (RPC_PARSE_ERROR, RPC_INVALID_REQUEST, RPC_METHOD_NOT_FOUND):
        return InvalidInput(message, data=data)
    return OrchError(message, data=data)
