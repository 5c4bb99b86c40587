"""Built-in secrets engines, keyed by mount type.

Core looks a mount's type up in :data:`BUILTIN_ENGINES` and calls the factory with the
mount's ``options`` and the server clock; the result is a framework backend that sees
only its own storage view. :func:`destroy_cubbyhole` is for core's token revocation.
"""

from __future__ import annotations

from typing import Callable

from vaultraft.engines.cubbyhole import cubbyhole_factory, destroy_cubbyhole
from vaultraft.engines.kv import kv_factory, kv_v1_factory, kv_v2_factory
from vaultraft.framework import Backend

EngineFactory = Callable[[dict[str, str], Callable[[], float]], Backend]

BUILTIN_ENGINES: dict[str, EngineFactory] = {
    "kv": kv_factory,
    "kv-v2": kv_v2_factory,
    "generic": kv_v1_factory,
    "cubbyhole": cubbyhole_factory,
}

__all__ = ["BUILTIN_ENGINES", "EngineFactory", "destroy_cubbyhole"]
