"""Lines in, replies out: a request line read once into checked requests, and the
replies built from results and errors."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from loguru import logger

from .. import protocol, validate
from ..errors import (
    RPC_INTERNAL_ERROR,
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_PARSE_ERROR,
    InvalidInput,
    LimitExceeded,
    OrchError,
    internal_error,
    rpc_code,
)


@dataclass(slots=True)
class Request:
    """One request of a line, checked: what to run, or the reply it gets unrun."""

    id: Any
    method: str | None  # None: not a request at all, refused even without an id
    notification: bool
    op: str  # "" when the method is unknown
    kwargs: dict  # checked, defaults filled
    refusal: dict | None = None  # the error reply, when the request is not to be run


def parse(line: bytes) -> Request | list[Request] | dict:
    """The request a line holds, a batch's list of them, or the error reply for a line
    that holds none (not JSON, too deep, an empty batch)."""
    try:
        message = json.loads(line)
    except RecursionError:
        return _too_deep()
    except ValueError as exc:
        return protocol.error(None, RPC_PARSE_ERROR, f"parse error: {exc}", {"reason": "parse"})
    if line.count(b"[") + line.count(b"{") > protocol.MAX_MESSAGE_DEPTH and \
            validate.json_depth(message, protocol.MAX_MESSAGE_DEPTH) > \
            protocol.MAX_MESSAGE_DEPTH:  # counting brackets first is far cheaper
        return _too_deep()
    if isinstance(message, list):
        if not message:
            return protocol.error(None, RPC_INVALID_REQUEST, "empty batch",
                                  {"reason": "invalid_request"})
        return [_check(m) for m in message]
    return _check(message)


def _check(msg: Any) -> Request:
    if not isinstance(msg, dict):
        return _not_a_request(None, "a request must be an object")
    id_ = msg.get("id")
    method = msg.get("method")
    if msg.get("jsonrpc") != "2.0" or not isinstance(method, str) or not plain_id(id_):
        return _not_a_request(id_ if isinstance(id_, str | int) else None,
                              'invalid request: needs "jsonrpc": "2.0", a method and an id')
    notification = "id" not in msg
    op = protocol.METHODS.get(method)
    if op is None:
        return Request(id_, method, notification, "", {}, protocol.error(
            id_, RPC_METHOD_NOT_FOUND, f"unknown method {method[:64]!r}",
            {"reason": "method_not_found"}))
    params = msg.get("params", {})
    try:
        if not isinstance(params, dict):
            raise InvalidInput("params must be an object with named parameters",
                               data={"field": "params"})
        return Request(id_, method, notification, op, validate.check(op, params))
    except OrchError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 -- never let one request take the daemon down
        logger.bind(method=method).exception("internal error")
        error = internal_error(exc)
    return Request(id_, method, notification, op, {}, error_reply(id_, error))


def _not_a_request(id_: Any, message: str) -> Request:
    return Request(id_, None, False, "", {}, protocol.error(
        id_, RPC_INVALID_REQUEST, message, {"reason": "invalid_request"}))


def _too_deep() -> dict:
    return error_reply(None, LimitExceeded(
        f"JSON nested deeper than {protocol.MAX_MESSAGE_DEPTH} levels"))


def plain_id(id_: Any) -> bool:
    return (isinstance(id_, str | int) and not isinstance(id_, bool)) or id_ is None


def id_of(line: bytes) -> Any:
    """The request's id, where one can be read (an answer then names its request)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    id_ = message.get("id") if isinstance(message, dict) else None
    return id_ if plain_id(id_) else None


def reply(id_: Any, ok: bool, value: Any) -> dict:
    return protocol.result(id_, value) if ok else error_reply(id_, value)


def error_reply(id_: Any, exc: OrchError) -> dict:
    return protocol.error(id_, rpc_code(exc), str(exc), {"reason": exc.reason, **exc.data})


def task_reply(task: asyncio.Task) -> Any:
    """What the task answering a line returned, or an internal error if it raised."""
    exc = task.exception()
    if exc is None:
        return task.result()
    logger.opt(exception=exc).error("internal error")
    return protocol.error(None, RPC_INTERNAL_ERROR, f"internal error: {type(exc).__name__}",
                          {"reason": "internal"})
