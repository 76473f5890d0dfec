"""The one rule for JSON values a client sends (docs/api.md "JSON values").

Whatever the server stores it must be able to serve back, on every store and through every
serializer it uses (orjson, the stdlib, SQLite JSON text, PostgreSQL jsonb). So every request
body is parsed here, by the fast path and by the DRF parser alike, and refused with a 400 naming
the field when it holds a value that cannot make that round trip:

- an integer outside the signed 64-bit range (-2**63 .. 2**63-1): orjson refuses to write it,
  PostgreSQL columns cannot hold it, and many clients read it wrongly;
- a number that only fits a double as infinity (`1e400`); `NaN` and `Infinity` are not JSON at
  all (a malformed body);
- arrays and objects nested deeper than MAX_DEPTH levels (the body itself is level 1).

Other numbers are read as IEEE doubles (so `1e-400` reads as 0.0, the nearest double). NUL
characters are a store question, not a JSON one: see core/dberrors.py.
"""

from __future__ import annotations

import contextlib
import json
import math
from decimal import Decimal
from typing import Any

import orjson

from core.errors import MALFORMED_JSON, ApiError

MAX_DEPTH = 64
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
INT_REASON = "integers must fit in 64 bits (-2^63 to 2^63-1)"
FINITE_REASON = "numbers must be finite (at most about 1.8e308 in magnitude)"
DEPTH_REASON = f"arrays and objects may nest at most {MAX_DEPTH} levels deep"
REASONS = (INT_REASON, FINITE_REASON, DEPTH_REASON)

# orjson reads an integer beyond 64 bits as a float; a run of 19+ digits anywhere in the body
# (a cheap byte scan) sends the body to the stdlib parser too, which keeps such integers exact.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19


class JsonValueError(ApiError):
    """A 400 naming the field (a JSON path: `metadata.n`, `stages[1].gates[0].x`)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        label = path or "body"
        super().__init__(400, f"invalid field '{label}': {reason}", field=label)


class MalformedJson(ApiError):
    """A 400 for a body that is not JSON at all."""

    def __init__(self, detail: str) -> None:
        self.detail_text = detail
        super().__init__(400, MALFORMED_JSON.format(detail))


def _path(trail: tuple[Any, Any] | None) -> str:
    """`metadata.n[3]` from the (parent trail, key) chain the walk keeps."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    path = ""
    for key in reversed(keys):
        if isinstance(key, int):
            key = f"[{key}]"
        elif path:
            key = f".{key}"
        path += key
    return path


def problem(value: Any, *, numbers: bool = True) -> tuple[str, str] | None:
    """(field path, reason) of the first value breaking the rule, or None. Iterative, so any
    nesting the parsers accepted is walked without recursion; paths are built only for the
    answer. `numbers=False` checks the nesting alone (for what orjson parsed without a long
    digit run, every number already fits)."""
    stack: list[tuple[Any, tuple[Any, Any] | None, int]] = [(value, None, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, trail, level = pop()
        kind = type(item)
        if kind is dict or kind is list:
            if level > MAX_DEPTH:
                return _path(trail), DEPTH_REASON
            pairs = item.items() if kind is dict else enumerate(item)
            for key, child in reversed(list(pairs)):
                ck = type(child)
                if ck is dict or ck is list or (numbers and (ck is int or ck is float)):
                    push((child, (trail, key), level + 1))
        elif kind is int:
            if not MIN_INT <= item <= MAX_INT:
                return _path(trail), INT_REASON
        elif kind is float and not math.isfinite(item):
            return _path(trail), FINITE_REASON
    return None


def check(value: Any, *, numbers: bool = True) -> None:
    """Raise JsonValueError for the first value `problem` finds."""
    found = problem(value, numbers=numbers)
    if found is not None:
        raise JsonValueError(*found)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _stdlib(raw: bytes | str) -> Any:
    return json.loads(raw, parse_constant=_refuse_constant)


def loads(raw: bytes | str) -> Any:
    """Parse a request body under the rule: MalformedJson or JsonValueError (both 400)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson stops at a number beyond a double's range without saying where; the stdlib
        # reads it as infinity, so the rule can name its field. Anything else is malformed.
        with contextlib.suppress(ValueError, RecursionError):
            check(_stdlib(raw))
        raise MalformedJson(str(exc)) from None
    data = raw.encode() if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH:  # else it cannot nest too deep
        check(value, numbers=False)
    if data.translate(_DIGITS_AS_ZERO).find(_LONG_DIGIT_RUN) >= 0:
        # orjson read an integer of 19+ digits as a float if it is beyond 64 bits; the stdlib
        # reads it exactly (the depth is bounded by now, so it cannot recurse too deep).
        value = _stdlib(raw)
        check(value)
    return value


def from_store(value: Any) -> Any:
    """A JSON value read back from a store, made servable by orjson: an integer beyond 64 bits
    can only be a double PostgreSQL's jsonb spelt out in full (1e308 comes back as 1 and 308
    zeros), or a value stored before this rule; it is served as that double."""
    kind = type(value)
    if kind is int:
        return value if MIN_INT <= value <= MAX_INT else float(value)
    if kind is dict:
        return {key: from_store(child) for key, child in value.items()}
    if kind is list:
        return [from_store(child) for child in value]
    return value


def _number(value: int | float) -> Decimal:
    return Decimal(repr(value)) if type(value) is float else Decimal(value)


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as JSON: numbers by their decimal value (PostgreSQL's
    jsonb keeps a number's value, not its spelling: `1e3` comes back as `1000`, `-0.0` as `0`,
    `1.152921504606847e+18` as `1152921504606847000`), objects whatever their key order."""
    ka, kb = type(a), type(b)
    if ka in (int, float) and kb in (int, float):
        return _number(a) == _number(b)
    if ka is not kb:
        return False
    if ka is dict:
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if ka is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
