"""The KV secrets engine: version 1 (pass-through) and version 2 (versioned)."""

from __future__ import annotations

from typing import Callable

from vaultraft.engines.kv.v1 import DEFAULT_LEASE_TTL, Passthrough, kv_v1_backend
from vaultraft.engines.kv.v2 import kv_v2_backend
from vaultraft.framework import Backend


def kv_factory(options: dict[str, str], now: Callable[[], float]) -> Backend:
    """Mount type "kv": ``options["version"] == "2"`` selects KV v2, anything else v1."""
    if str(options.get("version", "")).strip() == "2":
        return kv_v2_backend(now)
    return kv_v1_backend()


def kv_v2_factory(options: dict[str, str], now: Callable[[], float]) -> Backend:
    """Mount type "kv-v2": always KV v2."""
    del options
    return kv_v2_backend(now)


def kv_v1_factory(options: dict[str, str], now: Callable[[], float]) -> Backend:
    """Mount type "generic": always KV v1."""
    del options, now
    return kv_v1_backend()


__all__ = [
    "DEFAULT_LEASE_TTL",
    "Passthrough",
    "kv_factory",
    "kv_v1_backend",
    "kv_v1_factory",
    "kv_v2_backend",
    "kv_v2_factory",
]
