"""KV version 2: the versioned key/value engine, assembled from its path families.

``v2_store`` holds the values and storage layout, ``v2_data`` the secret-data endpoints,
``v2_metadata`` the config and metadata endpoints; this module wires them into one
:class:`~vaultraft.framework.Backend` and answers Vault's hint for any other path.
"""

from __future__ import annotations

from typing import Callable

from vaultraft.engines.kv.v2_data import DataPaths
from vaultraft.engines.kv.v2_metadata import MetadataPaths
from vaultraft.engines.kv.v2_store import KVContext
from vaultraft.framework import Backend
from vaultraft.logical import Operation, Request, Response

KV_V2_HELP = (
    "This backend provides a versioned key-value store. The kv backend reads and writes\n"
    "arbitrary secrets to the storage backend. The secrets are encrypted/decrypted by\n"
    "Vault: they are never stored unencrypted in the backend and the backend never has an\n"
    "opportunity to see the unencrypted value. Each key can have a configured number of\n"
    "versions, and versions can be retrieved based on their version numbers."
)

_ROOTS = frozenset({"metadata", "data", "delete", "undelete", "destroy"})
_SUBCOMMANDS = {
    Operation.CREATE: "put",
    Operation.UPDATE: "put",
    Operation.PATCH: "patch",
    Operation.READ: "get",
    Operation.LIST: "list",
    Operation.DELETE: "delete",
}


def invalid_path_response(req: Request) -> Response:
    """404 with Vault's hint toward the v2 endpoints / ``vault kv`` for any other path."""
    if req.path in _ROOTS:
        warning = "Non-listing operations on the root of a K/V v2 mount are not supported."
    else:
        warning = (
            "Invalid path for a versioned K/V secrets engine. See the API docs for the "
            "appropriate API endpoints to use. If using the Vault CLI, use 'vault kv "
            f"{_SUBCOMMANDS.get(req.operation, '')}' for this operation."
        )
    return Response(warnings=[warning], status=404)


class KVv2Backend(Backend):
    """The framework backend plus Vault's unpublished catch-all: a path no KV v2 endpoint
    matches answers 404 with a hint instead of ``unsupported path``."""

    async def handle(self, req: Request) -> Response | None:
        """Dispatch as :class:`Backend` does; unmatched paths get the KV v2 hint."""
        if req.operation is not Operation.HELP and self.match(req.path) is None:
            return invalid_path_response(req)
        return await super().handle(req)


def kv_v2_backend(now: Callable[[], float]) -> Backend:
    """A KV v2 backend whose timestamps come from ``now`` (seconds since the epoch)."""
    ctx = KVContext(now)
    data, meta = DataPaths(ctx), MetadataPaths(ctx)
    meta_paths = meta.paths()
    data_paths = data.paths()
    # Vault's order: config, data, metadata, destroy, subkeys, delete, undelete.
    paths = [meta_paths[0], data_paths[0], meta_paths[1], *data_paths[1:]]
    return KVv2Backend(paths, help=KV_V2_HELP, backend_type="kv")
