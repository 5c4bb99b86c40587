"""Per-device salts and Vault's HashStructure: every string value becomes an HMAC.

A salted HMAC lets an operator check whether a known value (a token, a password) appears
in the audit log (via ``sys/audit-hash``) without the log ever holding the value itself.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from typing import Any

SALT_BYTES = 32
HMAC_PREFIX = "hmac-sha256:"


class Salt:
    """A device's secret HMAC key. Never printed: ``repr`` hides it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("an audit salt must be at least 16 bytes")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> Salt:
        """A fresh random 32-byte salt (core persists ``.key`` in the audit table)."""
        return cls(secrets.token_bytes(SALT_BYTES))

    @property
    def key(self) -> bytes:
        """The raw salt bytes, for core to persist behind the barrier."""
        return self._key

    def hmac(self, value: str) -> str:
        """``"hmac-sha256:<hex>"`` of ``value`` under this salt (Vault's GetIdentifiedHMAC)."""
        digest = _hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return HMAC_PREFIX + digest

    def __repr__(self) -> str:
        return "Salt(<hidden>)"


def format_time(t: datetime) -> str:
    """RFC 3339 UTC with up to microsecond precision, trailing zeros trimmed (Go's RFC3339Nano)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    t = t.astimezone(timezone.utc)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def hash_structure(obj: Any, salt: Salt, *, non_hmac_keys: Collection[str] = ()) -> Any:
    """A copy of ``obj`` with every string leaf replaced by ``salt.hmac(leaf)``.

    Walks dicts, lists and tuples (tuples become lists); map keys are never hashed.
    Numbers, booleans and None are kept. A datetime is first rendered as RFC 3339, bytes
    are decoded as UTF-8, and any other object is hashed through ``str()`` so nothing
    unexpected leaks raw. A string whose nearest enclosing map key is in ``non_hmac_keys``
    is kept as is (Vault's audit_non_hmac_*_keys). ``obj`` itself is not modified.
    """
    skip = frozenset(non_hmac_keys)

    def walk(value: Any, key: str | None) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, key) for v in value]
        if isinstance(value, str):
            text = value
        elif isinstance(value, datetime):
            text = format_time(value)
        elif isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", errors="replace")
        else:
            text = str(value)
        if key is not None and key in skip:
            return text
        return salt.hmac(text)

    return walk(obj, None)
