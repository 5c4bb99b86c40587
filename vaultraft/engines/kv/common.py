"""Small helpers shared by the KV v1, KV v2 and cubbyhole engines.

Everything here is pure (no storage, no clock): time and duration formatting the way
Vault's Go code prints them, the JSON codec used for stored values, RFC 7386 merge
patch, and list-response shaping.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from vaultraft import jsoncodec
from vaultraft.framework import FieldData, parse_duration
from vaultraft.logical import NotFound, Response

NANOS = 1_000_000_000


def to_nanos(seconds: float) -> int:
    """Integer nanoseconds since the epoch from a float clock reading.

    A float holds an epoch time only to about a quarter of a microsecond, so the reading
    is rounded to whole microseconds rather than inventing nanosecond digits.
    """
    return int(round(seconds * 1_000_000)) * 1000


def format_time(ns: int | None) -> str:
    """RFC 3339 in UTC with trailing-zero-trimmed nanoseconds, as Go's ``RFC3339Nano``.

    ``None`` (an unset protobuf timestamp in Vault) prints as the empty string.
    """
    if ns is None:
        return ""
    secs, frac = divmod(ns, NANOS)
    base = _second_text(secs)
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


_last_second: tuple[int, str] = (-1, "")


def _second_text(secs: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole UTC second (the last one asked is remembered:
    a burst of writes formats the same second over and over)."""
    global _last_second
    cached_secs, text = _last_second
    if secs != cached_secs:
        if secs >= 0:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        else:  # before 1970: gmtime is platform-dependent there
            text = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (secs, text)
    return text


def go_duration(seconds: int) -> str:
    """A whole number of seconds printed as Go's ``time.Duration.String`` ("1h0m0s", "0s")."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m}m{sec}s"
    if m:
        return f"{sign}{m}m{sec}s"
    return f"{sign}{sec}s"


def parse_signed_duration(value: Any) -> int:
    """Seconds from an int or Go duration string that may be negative ("-1s", -5).

    Raises ValueError for anything that is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("-"):
            return -parse_duration(s[1:])
        return parse_duration(s)
    raise ValueError(f"invalid duration {value!r}")


def ttl_seconds(value: Any) -> int | None:
    """A KV v1 ``ttl``/``lease`` value in seconds, or None when it does not parse."""
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        return None


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON bytes of a stored value (never pickle); what
    ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)`` encodes, up to the
    spelling of floats (see vaultraft/jsoncodec.py)."""
    return jsoncodec.dumps(obj)


def decode_json(raw: bytes) -> Any:
    """The value :func:`encode_json` wrote."""
    return jsoncodec.loads(raw)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``target``; inputs are not modified.

    An object patch merges key by key and a ``null`` member removes that key; any other
    patch value replaces the target outright.
    """
    if not isinstance(patch, dict):
        return patch
    out: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def list_response(keys: list[str]) -> Response:
    """Vault's ``ListResponse``: ``{"keys": [...]}``; an empty listing is a 404."""
    if not keys:
        raise NotFound()
    return Response(data={"keys": keys})


def folder(path: str) -> str:
    """A listing prefix: ``path`` with a trailing ``/`` unless it is the root."""
    if path and not path.endswith("/"):
        return path + "/"
    return path


def accept_arbitrary_input(d: FieldData) -> None:
    """Mark every sent field as known, so a path taking arbitrary JSON is not warned about.

    Vault declares such paths ``TakesArbitraryInput``; our framework has no such flag yet,
    so the handler drops the body keys from the field data after reading ``req.data``.
    """
    for k in [k for k in d.raw if k not in d.schema]:
        del d.raw[k]
