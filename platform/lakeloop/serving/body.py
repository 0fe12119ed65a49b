"""Request bodies of the HTTP API: read within a size limit, parse within a depth limit, off the event loop.

Every failure is a 4xx :class:`~lakeloop.errors.InputError` that names the
limit or the field:

- :func:`read_body` trusts ``Content-Length`` only to refuse early (413 before
  a byte is read); without it, or when it lies, it reads at most
  ``limit + 1`` bytes and stops.
- :func:`parse_json` scans the bracket depth before handing bytes to ``json``
  (so 100,000 nested brackets are a 400, not a ``RecursionError``), accepts
  UTF-8 only, refuses NaN/Infinity and numbers outside float64 (naming the
  field), and runs in a worker thread above :data:`THREAD_ABOVE` bytes.
- :func:`public_message` makes any error text fit for a response body: the
  first line of the cause, without tracebacks or terminal colour codes.

The JSON schemas of the bodies (``*_SCHEMA``) are what the FastAPI routes
declare, so ``/openapi.json`` describes each request body.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

from lakeloop.errors import InputError

MAX_DEPTH = 32           # nesting of arrays/objects; a predict body needs 3
THREAD_ABOVE = 64 * 1024  # bodies larger than this are parsed in a worker thread
FLOAT64_MAX = 1.7976931348623157e308
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


class PayloadTooLarge(InputError):
    http_status = 413


class MalformedRequest(InputError):
    http_status = 400


class _OutOfRange:
    """A number JSON can write but float64 cannot hold; replaced by an error naming its field."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


# -- reading -------------------------------------------------------------------------
async def read_body(request, limit: int, what: str = "request body") -> bytes:
    """The body of a Starlette request, at most ``limit`` bytes (else :class:`PayloadTooLarge`)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
            if size < 0:
                raise ValueError
        except ValueError:
            raise MalformedRequest(f"Content-Length {declared[:40]!r} is not a byte count") from None
        if size > limit:
            raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} bytes (serve.max_bytes)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"{what} is over {limit} bytes; the limit is {limit} bytes (serve.max_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


# -- parsing -------------------------------------------------------------------------
def json_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings skipped); stops counting past ``limit``.

    Cheap: a body with few brackets is answered by counting them; otherwise
    strings are cut out and the running depth is a cumulative sum in numpy.
    """
    opening = raw.count(b"[") + raw.count(b"{")
    if opening <= limit:
        return opening
    import numpy as np

    brackets = _STRING.sub(b"", raw).translate(None, bytes(set(range(256)) - set(b"[]{}")))
    if not brackets:
        return 0
    arr = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((arr == ord("[")) | (arr == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def _parse_int(text: str):
    if len(text.lstrip("-")) > 309:  # beyond 1.8e308, and int() refuses > 4300 digits anyway
        return _OutOfRange(text)
    value = int(text)
    return _OutOfRange(text) if abs(value) > FLOAT64_MAX else value


def _parse_float(text: str):
    value = float(text)
    return _OutOfRange(text) if math.isinf(value) else value


def _constant(name: str):
    raise InputError(f"{name} is not allowed in requests: JSON has no NaN or infinity; send a finite number")


def _find_out_of_range(value, path: str = "$"):
    """The path and text of the first number float64 cannot hold, or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _OutOfRange):
            return where, item.text
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else
                          f"{where}[{json.dumps(k)[:60]}]") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def parse_json_now(raw: bytes, max_depth: int = MAX_DEPTH, what: str = "request body"):
    """Parse ``raw`` (UTF-8 JSON) with the depth, encoding and number checks; see the module docstring."""
    depth = json_depth(raw, max_depth)
    if depth > max_depth:
        raise MalformedRequest(f"{what} nests arrays/objects {depth} levels deep; the limit is {max_depth}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"{what} is not UTF-8 (byte {exc.start}); send UTF-8 encoded JSON") from None
    if text.startswith("\ufeff"):
        raise MalformedRequest(f"{what} starts with a byte order mark; send UTF-8 JSON without one")
    out_of_range = []

    def parse_int(s):
        v = _parse_int(s)
        if isinstance(v, _OutOfRange):
            out_of_range.append(v)
        return v

    def parse_float(s):
        v = _parse_float(s)
        if isinstance(v, _OutOfRange):
            out_of_range.append(v)
        return v

    try:
        data = json.loads(text, parse_constant=_constant, parse_int=parse_int, parse_float=parse_float)
    except RecursionError:  # cannot happen below the depth limit; kept as a last line of defence
        raise MalformedRequest(f"{what} nests too deeply; the limit is {max_depth}") from None
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise MalformedRequest(f"{what} is not valid JSON: {public_message(exc)}") from None
    if out_of_range:
        where, number = _find_out_of_range(data) or ("$", out_of_range[0].text)
        shown = number if len(number) <= 40 else f"{number[:20]}...({len(number)} digits)"
        raise InputError(f"{where} is {shown}, outside the float64 range (about ±1.8e308); "
                               "send a finite number")
    return data


async def parse_json(raw: bytes, max_depth: int = MAX_DEPTH, what: str = "request body"):
    """:func:`parse_json_now`, in a worker thread when ``raw`` is large (the event loop keeps serving)."""
    if len(raw) > THREAD_ABOVE:
        return await asyncio.to_thread(parse_json_now, raw, max_depth, what)
    return parse_json_now(raw, max_depth, what)


async def read_json(request, limit: int, what: str = "request body", empty=None):
    """Read and parse a request's JSON body; an empty body is ``empty`` when given, else an error."""
    raw = await read_body(request, limit, what)
    if not raw.strip():
        if empty is not None:
            return empty
        raise MalformedRequest(f"{what} is empty; send a JSON object")
    return await parse_json(raw, what=what)


# -- answers -------------------------------------------------------------------------
def public_message(exc_or_text, limit: int = 500) -> str:
    """Text fit for a response body: no traceback, no terminal codes, one line, at most ``limit`` chars.

    For a Ray task error it describes the cause (``TypeError: ...``), not Ray's wrapper.
    """
    if isinstance(exc_or_text, BaseException):
        exc = exc_or_text
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
        text = str(exc)
        name = type(exc).__name__
        if "Traceback (most recent call last)" in text or not text:
            lines = [ln for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
            text = lines[-1].strip() if lines else name
        text = text if text.startswith(name) else f"{name}: {text}"
    else:
        text = str(exc_or_text)
    text = _ANSI.sub("", text)
    text = text.split("Traceback (most recent call last)")[0]
    text = " ".join(text.split())  # one line
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:limit] + ("..." if len(text) > limit else "")


# -- request body schemas (declared in the OpenAPI description) -------------------------------
_SCALAR = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"}]}
PREDICT_SCHEMA = {
    "type": "object", "required": ["rows"], "additionalProperties": False,
    "properties": {
        "rows": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": _SCALAR},
                 "description": "feature values and/or entity ids, one object per row"},
        "routing_key": {"anyOf": [{"type": "string"}, {"type": "integer"}],
                        "description": "sticky routing: the same key gets the same version"},
        "version": {"type": "integer", "description": "pin a served version"},
    },
}
FEEDBACK_SCHEMA = {
    "type": "object", "required": ["request_id"], "additionalProperties": False,
    "properties": {
        "request_id": {"type": "string", "description": "the request_id a prediction answered with"},
        "label": {**_SCALAR, "description": "the true value of one row (row 0 unless 'row' says)"},
        "row": {"type": "integer", "minimum": 0},
        "labels": {"type": "array", "items": _SCALAR, "description": "one label per row of the request"},
        "reason": {"type": "string", "description": "why (corrections)"},
    },
}
DEPLOY_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "version": {"type": "integer", "minimum": 1}, "alias": {"type": "string"},
        "weight": {"type": "number", "minimum": 0, "maximum": 100}, "shadow": {"type": "boolean"},
    },
}
TRAFFIC_SCHEMA = {
    "type": "object", "required": ["weights"], "additionalProperties": False,
    "properties": {
        "weights": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                    "description": "version -> weight, e.g. {\"3\": 90, \"4\": 10}"},
        "shadow": {"type": "array", "items": {"type": "integer"}}, "sticky": {"type": "boolean"},
    },
}
PROMOTE_SCHEMA = {"type": "object", "additionalProperties": False,
                  "properties": {"version": {"type": "integer", "minimum": 1}, "force": {"type": "boolean"}}}
EMPTY_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}


def openapi_body(schema: dict) -> dict:
    """``openapi_extra`` for a route that reads its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
