"""Reading a JSON request body at a bounded cost, off the event loop.

A JSON body of a few MB can hold millions of values (``{"texts": ["", "", ...]}``, nested arrays, numbers),
and decoding it holds Python's interpreter lock for as long as it takes: half a second for 7 MB of small
objects on this project's 2-core machine, during which no other request (not even the health probe) is
answered. So a body is decoded in the serving process only when it cannot hold many values:

* :func:`value_bound` counts the bytes that start or separate JSON values (``,`` ``:`` ``[`` ``{``) in one C
  pass (a few ms for 16 MB). It is an upper bound on the number of values; commas inside texts count too.
* Under a few times the largest valid request (``4 * limit``, at least :data:`QUICK_VALUES`), the body is decoded
  in a worker thread (cheap: few values), or on the event loop when it is at most :data:`INLINE_BYTES` long (a
  single text: faster than the hop to a thread).
* Over it, a short-lived child process (:data:`_COUNTER`, its own interpreter) decodes the body and counts its
  values and depth; the serving process waits for it without holding any lock, and decodes the body itself only
  when the child says it is small. A body with too many values is refused with the count, before any of its
  items is looked at; invalid UTF-8, invalid JSON and nesting deeper than :data:`MAX_DEPTH` are refused with the
  reason.

Validation errors are bounded too (:func:`bounded_errors`): the first :data:`MAX_ERRORS` and a count.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32  # a valid request nests 3 levels; JSON deeper than this is refused before it is decoded
INLINE_BYTES = 8192  # a body this small (a single text, a feedback) is decoded on the event loop: tens of µs
QUICK_VALUES = 1024  # a body that cannot hold more values than this (or 4x the limit) is decoded in-process
MAX_ERRORS = 10  # validation errors listed in an error answer (the rest are counted)

_COUNTER = r"""
import json, sys
try:
    body = json.loads(sys.stdin.buffer.read())
except RecursionError:
    print("deep"); raise SystemExit
except ValueError as error:
    print("invalid", str(error).replace("\n", " ")); raise SystemExit
values, depth, stack = 0, 0, [(body, 1)]
while stack:
    node, level = stack.pop()
    values += 1
    depth = max(depth, level)
    if isinstance(node, dict):
        stack.extend((v, level + 1) for v in node.values())
    elif isinstance(node, list):
        stack.extend((v, level + 1) for v in node)
print("ok", values, depth)
"""


class BodyError(ValueError):
    """The body cannot be read as a request; ``status`` 413 (too many values) or 422 (not valid JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BodyShape:
    values: int
    depth: int


def value_bound(body: bytes) -> int:
    """An upper bound on the JSON values in ``body``: separators and openers, each counted in one C pass."""
    return body.count(b",") + body.count(b":") + body.count(b"[") + body.count(b"{") + 1


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(422, f"the body is not valid UTF-8 (byte {error.start}): send UTF-8 JSON") from None


def _parse(body: bytes, text: str | None = None) -> Any:
    """The JSON value of ``body`` (``text``: its UTF-8 decoding, when already made)."""
    try:
        return json.loads(_text(body) if text is None else text)
    except RecursionError:
        raise BodyError(422, f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise BodyError(422, f"the body is not valid JSON ({error}): send a JSON object") from None


def _depth_ok(body: bytes) -> bool:
    """Whether ``body`` cannot nest deeper than MAX_DEPTH (it has fewer openers than that)."""
    return body.count(b"[") + body.count(b"{") <= MAX_DEPTH


async def _shape_in_child(body: bytes) -> BodyShape:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _COUNTER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate(body)
    words = out.decode(errors="replace").split(maxsplit=1)
    if not words:
        raise BodyError(422, "the body could not be read as JSON")
    if words[0] == "deep":
        raise BodyError(422, f"the JSON nests deeper than {MAX_DEPTH} levels")
    if words[0] == "invalid":
        raise BodyError(422, f"the body is not valid JSON ({words[1].strip() if len(words) > 1 else '?'})")
    values, depth = (int(x) for x in words[1].split())
    return BodyShape(values, depth)


async def read_json(body: bytes, limit: int, what: str = "values") -> Any:
    """Decode ``body`` if it holds at most ``limit`` JSON values and nests at most MAX_DEPTH levels, else raise
    :class:`BodyError` (413 for too many values, naming ``what``); never decodes a large body in this process's
    interpreter, nor one over INLINE_BYTES on the event loop."""
    if not body.strip():
        raise BodyError(422, "the body is empty: send a JSON object")
    text = None  # decoded from UTF-8 once: here when the child must count it first, else with the JSON below
    if value_bound(body) > max(QUICK_VALUES, 4 * limit) or not _depth_ok(body):
        text = _text(body)
        shape = await _shape_in_child(body)
        if shape.depth > MAX_DEPTH:
            raise BodyError(422, f"the JSON nests {shape.depth} levels deep; at most {MAX_DEPTH} are read")
        if shape.values > limit:
            raise BodyError(413, f"the body holds {shape.values:,} JSON {what}; at most {limit:,} are read")
    if len(body) <= INLINE_BYTES:  # a small body decodes faster than a hop to a worker thread
        return _parse(body, text)
    return await asyncio.to_thread(_parse, body, text)


def bounded_errors(errors: list[dict[str, Any]], limit: int = MAX_ERRORS) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` errors and how many were left out."""
    return errors[:limit], max(0, len(errors) - limit)
