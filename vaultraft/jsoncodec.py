"""JSON encoding and decoding on the request path, through orjson when it can.

Why: every KV write encodes and decodes JSON several times (the request body, the stored
metadata and version, the response, the request's log line); the standard library's
encoder costs about as much as all the AES-GCM work of that write. orjson (Rust, widely
used, wheels for every platform vaultraft runs on) does the same work several times
faster.

Contract: :func:`dumps` / :func:`loads` accept and produce what ``json.dumps`` /
``json.loads`` do for JSON-shaped Python values. Whatever orjson refuses (integers beyond
64 bits, ``NaN``, lone surrogates, non-string keys other than ints) falls back to the
standard library, so no input behaves differently; only whitespace and the escaping of
non-ASCII characters (raw UTF-8 instead of ``\\u`` escapes) differ in the output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a broken install working
    orjson = None  # type: ignore[assignment]

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: orjson reads an integer outside [-2**63, 2**64 - 1] as a float: a run of 20+ digits, or a
#: minus sign then 19+ digits, may be one (a false alarm, e.g. inside a string, only costs the
#: slower parser). A positive 19-digit integer — a nanosecond timestamp — always fits.
_LONG_DIGITS = re.compile(rb"[0-9]{20}|-[0-9]{19}")


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON of ``obj``; ``default`` converts values JSON has no type for.
    Raises TypeError / ValueError as ``json.dumps`` would."""
    if orjson is not None:
        try:
            return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS)
        except (orjson.JSONEncodeError, TypeError):
            pass
    if default is None:
        return _COMPACT.encode(obj).encode("utf-8")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=default).encode("utf-8")


def loads(raw: bytes | str) -> Any:
    """The value of the JSON document ``raw``; raises ValueError (json.JSONDecodeError) or
    UnicodeDecodeError as ``json.loads`` would."""
    if orjson is not None:
        b = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        if _LONG_DIGITS.search(b) is None:
            try:
                return orjson.loads(b)
            except orjson.JSONDecodeError:
                pass
    return json.loads(raw)
