"""JSON decoding whose nesting depth is bounded *before* the decoder runs.

The standard decoder guards its recursion only with the interpreter's recursion limit, which other
libraries in the same process may raise (web3/eth packages do); deeply nested hostile input then
overflows the C stack and kills the process instead of raising. Every parser of untrusted JSON
here calls :func:`loads`. Standard library only: the enclave imports it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "check_depth", "loads"]

MAX_JSON_DEPTH = 32
_SPECIAL = re.compile(r'["\\\[\]{}]')


def check_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ``ValueError`` if arrays/objects in ``text`` nest deeper than ``max_depth`` (one linear scan)."""
    depth, in_string, escaped_at = 0, False, -1
    for match in _SPECIAL.finditer(text):
        position, char = match.start(), match.group()
        if position == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = position + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nests deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1


def loads(
    raw: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_JSON_DEPTH, **kwargs: Any
) -> Any:
    """Decode JSON (UTF-8 bytes or text) after checking its nesting depth.

    Guarantees: never recurses deeper than ``max_depth`` levels; raises ``ValueError`` (including
    ``UnicodeDecodeError`` and ``json.JSONDecodeError``) for bad UTF-8, excessive nesting or invalid
    JSON. ``kwargs`` go to :func:`json.loads` (e.g. ``object_pairs_hook``).
    """
    text = bytes(raw).decode("utf-8") if not isinstance(raw, str) else raw
    check_depth(text, max_depth)
    return json.loads(text, **kwargs)
