"""The JSON-RPC 2.0 wire format shared by the daemon and the client."""

from __future__ import annotations

import json
from typing import Any

from .registry import BY_NAME
from .validate import MAX_DEPTH

MAX_LINE = 4 << 20  # bytes, newline excluded
#: A request wraps its values in up to three levels (request, params, a list param).
MAX_MESSAGE_DEPTH = MAX_DEPTH + 3


#: Protocol method -> operation, and back (see ``registry``).
METHODS: dict[str, str] = {op.wire: op.name for op in BY_NAME.values()}
OP_METHOD: dict[str, str] = {op.name: op.wire for op in BY_NAME.values()}


# Made once: json.dumps builds a new encoder at every call when given options.
_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ASCII = json.JSONEncoder(separators=(",", ":")).encode


def encode(message: Any) -> bytes:
    try:
        return _UTF8(message).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (in an echoed id, say): escape it
        return _ASCII(message).encode() + b"\n"


def error(id_: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def result(id_: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


_ID_TYPES = (str, int, type(None))
