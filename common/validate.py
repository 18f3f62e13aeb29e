"""The input-validation layer: every byte a client sends passes here before any work (pure).

A request body or a WebSocket frame is first decoded by :func:`parse_json`, which makes the whole
document safe to handle: at most ``max_bytes``, nested at most ``max_depth`` deep, strict UTF-8, no
``NaN``/``Infinity`` (nor a number too large for a float), every string valid Unicode (no lone
surrogate such as ``\\ud800``, which cannot be stored, logged as UTF-8 or put on Kafka), every integer
within the signed 64 bits the database holds. Then the field readers take what an endpoint needs,
with strict types: an integer field takes a JSON integer only (not ``true``, ``"3"`` or ``3.0``), a
text field a string only; a query-string integer is ASCII digits only (not ``+1``, `` 1``, ``1_000``
or other scripts' digits, all of which ``int()`` takes).

Every refusal is ``AppError(10002, message, field=name)``: a 400 over HTTP, an ``error`` frame on a
socket; never a 500, a dead letter or a silent close. Decisions: a missing or ``null`` optional
field is absent; an empty string is absent only where :func:`text` is told ``empty_is_absent``;
ids are positive (``0`` is refused); a list of ids may be empty where the caller allows it, holds
integers only, and a repeated id counts once.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from common.errors import AppError, Code

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
MAX_BODY_BYTES = 64 * 1024   # an HTTP body or a WebSocket frame
MAX_DEPTH = 8                # {"payload": {"member_ids": [1]}} is 3 deep
MAX_IDS = 10_000             # ids in one list (a group's new members)
USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
USERNAME_RULE = "username must be 3-32 letters, digits, '_', '.' or '-'"
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,19}")
_KEY = re.compile(r"[A-Za-z0-9_]{1,40}")


def invalid(message: str, field: str | None = None) -> AppError:
    return AppError(Code.INVALID_PARAMS, message, field=field)


def _reject_constant(name: str):
    raise invalid(f"{name} is not a JSON number")


def parse_json(raw: bytes | str, *, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON document and check all of it (see the module docstring); 10002 otherwise."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise invalid(f"the JSON document is larger than {max_bytes} bytes")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")  # strict: an invalid sequence is refused, not replaced
        except UnicodeDecodeError:
            raise invalid("the document is not valid UTF-8") from None
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except AppError:
        raise
    except RecursionError:
        raise invalid(f"JSON nested deeper than {max_depth}") from None
    except ValueError:  # JSONDecodeError, and an integer of more than 4300 digits
        raise invalid("the document is not valid JSON") from None
    check_tree(value, max_depth)
    return value


def check_tree(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Depth, Unicode, integer range and finiteness of an already decoded document; the 10002 names
    where the fault is as the path of object keys (``payload.content``)."""
    stack = [(value, 1, None)]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, str):
            _check_text(item, field)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise invalid("an integer is outside the signed 64-bit range", field)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise invalid("a number is too large", field)
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise invalid(f"JSON nested deeper than {max_depth}", field)
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, field)
                    # an odd key (long, or not a plain name) is not echoed back: the path stops at its parent
                    path = _child_path(field, key, depth)
                    stack.append((child, depth + 1, path))
            else:
                stack.extend((child, depth + 1, field) for child in item)
        else:
            raise invalid(f"unexpected value of type {type(item).__name__}", field)


def _child_path(field: str | None, key: str, depth: int) -> str | None:
    """``payload.content``; None (no field named) below a key that is not a plain name of at most
    40 characters (it is not echoed back) or below a list at the top."""
    if (depth > 1 and field is None) or not _KEY.fullmatch(key):
        return None
    return f"{field}.{key}" if field else key


def _check_text(text: str, field: str | None) -> None:
    if _SURROGATE.search(text):
        raise invalid("text must be valid Unicode (no lone surrogates)", field)


def obj(value: Any, name: str = "body") -> dict:
    """A JSON object (a body, a frame's payload)."""
    if not isinstance(value, dict):
        raise invalid(f"{name} must be a JSON object", None if name == "body" else name)
    return value


def integer(body: dict, name: str, *, required: bool = True, minimum: int = 1,
            maximum: int = INT64_MAX, default: int | None = None) -> int | None:
    """A JSON integer in ``[minimum, maximum]``; ids are positive (the default minimum)."""
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required", name)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer", name)
    if not minimum <= value <= maximum:
        raise invalid(f"{name} must be between {minimum} and {maximum}", name)
    return value


def id_list(body: dict, name: str, *, max_items: int = MAX_IDS, allow_empty: bool = True) -> list[int]:
    """A list of positive integer ids, each once (a repeated id is dropped; order kept)."""
    value = body.get(name)
    if value is None:
        value = []
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list of ids", name)
    if not value and not allow_empty:
        raise invalid(f"{name} must not be empty", name)
    if len(value) > max_items:
        raise invalid(f"{name} holds more than {max_items} ids", name)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= INT64_MAX:
            raise invalid(f"{name} must hold positive integer ids only", name)
    return list(dict.fromkeys(value))


def text(body: dict, name: str, *, required: bool = True, max_len: int, min_len: int = 1,
         empty_is_absent: bool = False, default: str | None = None) -> str | None:
    """A string of ``min_len``–``max_len`` characters (valid Unicode, no NUL)."""
    value = body.get(name)
    if value is None or (empty_is_absent and value == ""):
        if required:
            raise invalid(f"{name} is required", name)
        return default
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string", name)
    if not min_len <= len(value) <= max_len:
        raise invalid(f"{name} must be {min_len}-{max_len} characters", name)
    _check_text(value, name)
    if "\x00" in value:
        raise invalid(f"{name} must not contain NUL", name)
    return value


def choice(body: dict, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or value not in choices:
        raise invalid(f"{name} is one of {', '.join(choices)}", name)
    return value


def username(value: Any, name: str = "username") -> str:
    """The username rule, the whole string (``"abcd\\n"`` is refused: fullmatch, not ``$``)."""
    if not isinstance(value, str) or not USERNAME.fullmatch(value):
        raise invalid(USERNAME_RULE, name)
    return value


def query_int(raw: str | None, name: str, *, minimum: int = 0, maximum: int = INT64_MAX,
              default: int | None = None) -> int | None:
    """An integer from a query string: ASCII digits only, within ``[minimum, maximum]``."""
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw):
        raise invalid(f"{name} must be a whole number of at most 19 digits", name)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise invalid(f"{name} must be between {minimum} and {maximum}", name)
    return value
