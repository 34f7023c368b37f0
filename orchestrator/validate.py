"""Input checking for every operation, shared by the Python API, the CLI and the daemon.

Each operation's parameters are a ``Spec`` of the checkers here, in its record in
``registry``; ``check(op, params)`` returns them
normalised (JSON values as canonical text, seconds as milliseconds) or raises
``InvalidInput`` / ``LimitExceeded`` naming the field and the limit. Nothing is written
before a request has passed here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from . import defaults, model
from .errors import InvalidInput, LimitExceeded
from .model import Effect, Kind, Outcome, Resolution, Status

MAX_VALUE_BYTES = 1 << 20  # payload, result, checkpoint, input, error
MAX_RAW_TEXT_BYTES = 4 << 20  # JSON as typed, before it is made compact
MAX_DEPTH = 64
MAX_KEY_BYTES = 512
MAX_TTL_S = 86_400
MAX_DELAY_S = 10 * 365 * 86_400
MAX_WORKER_CHARS = 128
DEFAULT_TTL_MS = round(defaults.TTL_S * 1000)
MAX_TOOL_BYTES = 128
INT64 = (-(1 << 63), (1 << 63) - 1)

# The value sets as plain strings (click matches an enum choice by its member name).
KINDS = tuple(k.value for k in Kind)
CLAIM_KINDS = tuple(k.value for k in model.CLAIM_KINDS)
SUBMIT_KINDS = tuple(k.value for k in model.SUBMIT_KINDS)
EFFECTS = tuple(e.value for e in Effect)
STATUSES = tuple(s.value for s in Status)
OUTCOMES = tuple(o.value for o in Outcome)
RESOLUTIONS = tuple(r.value for r in Resolution)
_QUEUE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

REQUIRED = object()


def json_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value (a scalar is 0, ``[]`` is 1), without recursion.

    Stops counting once past ``limit``: anything returned above it means "too deep".
    """
    if not isinstance(value, dict | list | tuple):
        return 0
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            d += 1
            stack.extend((x, d) for x in v.values())
        elif isinstance(v, list | tuple):
            d += 1
            stack.extend((x, d) for x in v)
        else:
            continue
        if d > deepest:
            deepest = d
            if d > limit:  # stop early on hostile input
                return d
    return deepest


#: One encoder, made once: json.dumps builds a new one on every call with these options.
dump_json: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def parse_json_text(field: str, text: str) -> Any:
    """Parse JSON given as text (CLI flags, files).

    The limit counts the value as stored (compact), which ``json_value`` checks after
    parsing; this cap only keeps absurd input from being parsed at all.
    """
    if len(text.encode()) > MAX_RAW_TEXT_BYTES:
        raise LimitExceeded(f"{field}: JSON text is over {MAX_RAW_TEXT_BYTES} bytes",
                            data={"field": field, "limit": MAX_VALUE_BYTES})
    try:
        return json.loads(text)
    except RecursionError:
        raise LimitExceeded(f"{field}: JSON is nested deeper than {MAX_DEPTH} levels",
                            data={"field": field, "limit": MAX_DEPTH}) from None
    except ValueError as exc:
        raise InvalidInput(f"{field}: not valid JSON ({exc})", data={"field": field}) from None


# --- field checkers: (field name, raw value) -> normalised value ---------------------


def utf8_size(field: str, s: str) -> int:
    """Bytes of ``s`` in UTF-8; a lone surrogate (valid JSON, not UTF-8) is invalid."""
    if s.isascii():  # the common case, without encoding a copy
        return len(s)
    try:
        return len(s.encode())
    except UnicodeEncodeError:
        raise InvalidInput(f"{field}: not valid Unicode (a lone surrogate)",
                           data={"field": field}) from None


def json_value(field: str, v: Any) -> str:
    try:
        text = dump_json(v)
    except RecursionError:
        text = None  # far too deep for the encoder: reported as too deep below
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field}: not a JSON value ({exc})", data={"field": field}) from None
    # Only text with enough brackets can be too deep: count them before walking the value.
    if text is None or (text.count("[") + text.count("{") > MAX_DEPTH
                        and json_depth(v) > MAX_DEPTH):
        raise LimitExceeded(f"{field}: JSON is nested deeper than {MAX_DEPTH} levels",
                            data={"field": field, "limit": MAX_DEPTH})
    if utf8_size(field, text) > MAX_VALUE_BYTES:
        raise LimitExceeded(f"{field}: JSON text is over {MAX_VALUE_BYTES} bytes",
                            data={"field": field, "limit": MAX_VALUE_BYTES})
    return text


def _type_error(field: str, what: str, v: Any) -> InvalidInput:
    return InvalidInput(f"{field}: expected {what}, got {type(v).__name__}",
                        data={"field": field})


def integer(lo: int = INT64[0], hi: int = INT64[1]) -> Callable[[str, Any], int]:
    def check(field: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _type_error(field, "an integer", v)
        if not lo <= v <= hi:
            raise LimitExceeded(f"{field}: must be between {lo} and {hi}",
                                data={"field": field, "limit": [lo, hi]})
        return v
    return check


item_id = integer(1)


def seconds(hi: float, *, positive: bool = False) -> Callable[[str, Any], int]:
    """Seconds (fractions allowed) in (0, hi] or [0, hi], returned as milliseconds."""
    def check(field: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _type_error(field, "a number of seconds", v)
        low_ok = v > 0 if positive else v >= 0
        if not low_ok or v > hi:
            bounds = f"({0}, {hi:g}]" if positive else f"[0, {hi:g}]"
            raise LimitExceeded(f"{field}: must be in {bounds} seconds",
                                data={"field": field, "limit": hi})
        ms = round(v * 1000)
        return max(ms, 1) if positive else ms
    return check


ttl = seconds(MAX_TTL_S, positive=True)
delay = seconds(MAX_DELAY_S)


def boolean(field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _type_error(field, "true or false", v)
    return v


def text(max_bytes: int) -> Callable[[str, Any], str]:
    def check(field: str, v: Any) -> str:
        if not isinstance(v, str):
            raise _type_error(field, "a string", v)
        if not v:
            raise InvalidInput(f"{field}: must not be empty", data={"field": field})
        if utf8_size(field, v) > max_bytes:
            raise LimitExceeded(f"{field}: over {max_bytes} bytes of UTF-8",
                                data={"field": field, "limit": max_bytes})
        return v
    return check


key = text(MAX_KEY_BYTES)
token = text(MAX_KEY_BYTES)
error_text = text(MAX_VALUE_BYTES)


def worker(field: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _type_error(field, "a string", v)
    if not 1 <= len(v) <= MAX_WORKER_CHARS or _CONTROL.search(v):
        raise InvalidInput(f"{field}: must be 1 to {MAX_WORKER_CHARS} characters, "
                           "no control characters", data={"field": field})
    utf8_size(field, v)
    return v


def queue(field: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _type_error(field, "a string", v)
    if not _QUEUE.match(v):
        raise InvalidInput(f"{field}: {v[:64]!r} is not a queue name "
                           "(1 to 128 of A-Z a-z 0-9 . _ : -)", data={"field": field})
    return v


def choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(field: str, v: Any) -> str:
        if v not in options or not isinstance(v, str):
            raise InvalidInput(f"{field}: must be one of {', '.join(options)}",
                               data={"field": field})
        return v
    return check


def claimed_through(kind: str) -> str:
    """Why a claim never hands out a goal or a tool execution, and what claims one."""
    parent, how = {"goal": ("session", "create_goal (orch goal add)"),
                   "tool_execution": ("goal", "execute_tool_idempotent (orch tool exec)")}[kind]
    return f"a {kind} is claimed only for its {parent}'s holder, by {how} with its key"


def claim_kind(field: str, v: Any) -> str:
    if v in KINDS and v not in CLAIM_KINDS:
        raise InvalidInput(f"{field}: {claimed_through(v)}, never by a claim",
                           data={"field": field})
    return choice(CLAIM_KINDS)(field, v)


def list_of(inner: Callable[[str, Any], Any], max_len: int = 64) -> Callable[[str, Any], list]:
    def check(field: str, v: Any) -> list:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list | tuple):
            raise _type_error(field, "a list", v)
        if not 1 <= len(v) <= max_len:
            raise LimitExceeded(f"{field}: give 1 to {max_len} values",
                                data={"field": field, "limit": max_len})
        return list(dict.fromkeys(inner(field, x) for x in v))
    return check


#: Leases one heartbeat may extend: a worker with more makes several calls. The
#: bound keeps one call's transaction (and its answer) short for everyone else.
MAX_HEARTBEAT_LEASES = 1000


def leases(field: str, v: Any) -> list[dict]:
    """``[{item_id, token}, ...]``: each item once, in the order given."""
    if not isinstance(v, list | tuple):
        raise _type_error(field, "a list of {item_id, token} objects", v)
    if not 1 <= len(v) <= MAX_HEARTBEAT_LEASES:
        raise LimitExceeded(f"{field}: give 1 to {MAX_HEARTBEAT_LEASES} leases",
                            data={"field": field, "limit": MAX_HEARTBEAT_LEASES})
    out: list[dict] = []
    seen: set[int] = set()
    for i, lease in enumerate(v):
        at = f"{field}[{i}]"
        if not isinstance(lease, dict):
            raise _type_error(at, "an object {item_id, token}", lease)
        if set(lease) != {"item_id", "token"}:
            extra = sorted(set(lease) - {"item_id", "token"}, key=str)
            raise InvalidInput(f"{at}: expected exactly item_id and token"
                               + (f", not {extra[0]}" if extra else ""), data={"field": at})
        iid = item_id(f"{at}.item_id", lease["item_id"])
        if iid in seen:
            # Which of two tokens for one item counts would be a guess: refuse it.
            raise InvalidInput(f"{at}.item_id: item {iid} is given twice",
                               data={"field": f"{at}.item_id"})
        seen.add(iid)
        out.append({"item_id": iid, "token": token(f"{at}.token", lease["token"])})
    return out


def optional(inner: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def check(field: str, v: Any) -> Any:
        return None if v is None else inner(field, v)
    return check


# --- the parameters of an operation ----------------------------------------------------

#: A field's checker and its default (given normalised; REQUIRED: the caller must give it).
Field = tuple[Callable[[str, Any], Any], Any]


class Spec:
    """One operation's parameters: ``{name: (checker, default)}``.

    ``retired``: parameters it no longer takes, each with what to do instead, so a
    caller still sending one learns that rather than reading "unknown parameter".
    """

    def __init__(self, fields: dict[str, Field], *, retired: dict[str, str] | None = None):
        self.fields = fields
        self.retired = retired or {}
        # Worked out once: the defaults, the required names, the list defaults.
        self.defaults = {n: d for n, (_, d) in fields.items()}
        self.required = [n for n, (_, d) in fields.items() if d is REQUIRED]
        self.list_defaults = [n for n, (_, d) in fields.items() if isinstance(d, list)]

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        fields = self.fields
        out = dict(self.defaults)
        for name, v in params.items():
            entry = fields.get(name)
            if entry is None and name in self.retired:
                raise InvalidInput(self.retired[name], data={"field": name})
            if entry is None:
                raise InvalidInput(f"{name}: unknown parameter", data={"field": name})
            if v is not None:
                out[name] = entry[0](name, v)
        for name in self.required:
            if out[name] is REQUIRED:
                raise InvalidInput(f"{name}: required", data={"field": name})
        for name in self.list_defaults:  # never hand out the shared default list itself
            if out[name] is fields[name][1]:
                out[name] = list(out[name])
        return out


MAX_BATCH = 10_000


class Batch(Spec):
    """A list of another operation's parameters under one name (``submit_many``'s items)."""

    def __init__(self, name: str, each: Spec, what: str):
        super().__init__({name: (lambda field, v: v, REQUIRED)})
        self.name, self.each, self.what = name, each, what

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self.name
        items = params.get(name)
        if set(params) - {name} or not isinstance(items, list):
            raise InvalidInput(f"{name}: expected a list of {self.what}", data={"field": name})
        if len(items) > MAX_BATCH:
            raise LimitExceeded(f"{name}: at most {MAX_BATCH} per call",
                                data={"field": name, "limit": MAX_BATCH})
        return {name: [self.each.check(p) if isinstance(p, dict)
                       else _not_object(f"{name}[{i}]") for i, p in enumerate(items)]}


def _not_object(field: str):
    raise InvalidInput(f"{field}: expected an object", data={"field": field})


_CHECKS_BY_OP: dict[str, Spec] = {}


def check(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` for operation ``op``; return them normalised, defaults filled."""
    spec = _CHECKS_BY_OP.get(op)
    if spec is None:
        # Each operation's parameters are in its registry record, which is made of the
        # checkers above: looked up on first use, as that module imports this one.
        from .registry import BY_NAME

        spec = _CHECKS_BY_OP[op] = BY_NAME[op].params
    return spec.check(params)
