"""The JSON-RPC 2.0 wire format shared by the daemon and the client."""

from __future__ import annotations

import json
from typing import Any

from .validate import MAX_DEPTH

MAX_LINE = 4 << 20  # bytes, newline excluded
#: A request wraps its values in up to three levels (request, params, a list param).
MAX_MESSAGE_DEPTH = MAX_DEPTH + 3


#: Protocol method -> operation: the wire names clients already speak.
METHODS: dict[str, str] = {
    "submitTask": "submit_task", "submitMany": "submit_many", "claimTask": "claim_task",
    "heartbeat": "heartbeat", "releaseTask": "release_task",
    "releaseAndClaim": "release_and_claim",
    "staleRecovery": "stale_recovery", "cancelTask": "cancel_task",
    "checkpoint": "checkpoint", "resolveTask": "resolve_task", "getTask": "get_task",
    "listTasks": "list_tasks", "listEvents": "list_events", "status": "status",
    "verify": "verify", "ping": "ping", "startSession": "start_session",
    "resumeSession": "resume_session", "createGoal": "create_goal",
    "executeToolIdempotent": "execute_tool_idempotent", "replaySession": "replay_session",
    "explainTask": "explain_task",
}
OP_METHOD = {op: method for method, op in METHODS.items()}


# Made once: json.dumps builds a new encoder at every call when given options.
_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ASCII = json.JSONEncoder(separators=(",", ":")).encode


def encode(message: Any) -> bytes:
    try:
        return _UTF8(message).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (in an echoed id, say): escape it
        return _ASCII(message).encode() + b"\n"


def error(id_: Any, code: int, message: str, data: dict | None = None) -> dict:
    err: dict[str, Any] = {"code": code, "message": message}
    if data:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def result(id_: Any, value: Any) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


_ID_TYPES = (str, int, type(None))
