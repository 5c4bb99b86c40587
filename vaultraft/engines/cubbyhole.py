"""Cubbyhole: per-token private pass-through storage.

Every token sees only ``<cubbyhole_id>/`` of the mount's view, where ``cubbyhole_id`` is a
stable identifier core derives from the token (never the token itself). Core calls
:func:`destroy_cubbyhole` when the token is revoked.
"""

from __future__ import annotations

from typing import Callable

from vaultraft.engines.kv.v1 import Passthrough
from vaultraft.framework import Backend
from vaultraft.logical import InternalError, PermissionDenied, Request, StorageView, SubView, WriteOp
from vaultraft.logical.storage import collect_keys

CUBBYHOLE_HELP = (
    "The cubbyhole backend reads and writes arbitrary secrets to the backend. The secrets\n"
    "are encrypted/decrypted by Vault: they are never stored unencrypted in the backend\n"
    "and the backend never has an opportunity to see the unencrypted value.\n\n"
    "This backend differs from the 'kv' backend in that it is namespaced per-token. Tokens\n"
    "can only read and write their own values, with no sharing possible (per-token\n"
    "cubbyholes). When the token is revoked, the entire set of stored values for that\n"
    "token is also removed."
)
CUBBYHOLE_SYNOPSIS = (
    "Pass-through secret storage to a token-specific cubbyhole in the storage backend, "
    "allowing you to read/write arbitrary data into secret storage."
)
CUBBYHOLE_DESCRIPTION = (
    "The cubbyhole backend reads and writes arbitrary data into secret storage, encrypting "
    "it along the way.\n\nThe view into the cubbyhole storage space is different for each "
    "token; it is a per-token cubbyhole. When the token is revoked all values are removed."
)

# Deletes per storage batch when a cubbyhole is destroyed (keeps each log entry small).
_DESTROY_BATCH = 256


def _prefix(cubbyhole_id: str) -> str:
    if not cubbyhole_id or "/" in cubbyhole_id:
        raise InternalError("invalid cubbyhole id")
    return cubbyhole_id + "/"


async def _token_view(req: Request) -> StorageView:
    cid = req.token.cubbyhole_id if req.token is not None else ""
    if not cid:
        raise PermissionDenied()
    return SubView(req.view(), _prefix(cid))


def cubbyhole_backend() -> Backend:
    """The cubbyhole backend: KV v1 semantics on the caller's own sub-view, no leases."""
    p = Passthrough(_token_view, lease_ttl=None, strict_path=True)
    return Backend(
        [p.path(synopsis=CUBBYHOLE_SYNOPSIS, description=CUBBYHOLE_DESCRIPTION,
                path_description="Specifies the path of the secret.")],
        help=CUBBYHOLE_HELP,
        backend_type="cubbyhole",
    )


async def destroy_cubbyhole(view: StorageView, cubbyhole_id: str) -> None:
    """Delete every entry of one token's cubbyhole from the cubbyhole mount's ``view``.

    Idempotent: destroying an empty or already destroyed cubbyhole does nothing.
    Raises InternalError for an empty id (it would address every cubbyhole).
    """
    sub = SubView(view, _prefix(cubbyhole_id))
    keys = await collect_keys(sub)
    for i in range(0, len(keys), _DESTROY_BATCH):
        await sub.write_batch([WriteOp(k, None) for k in keys[i:i + _DESTROY_BATCH]])


def cubbyhole_factory(options: dict[str, str], now: Callable[[], float]) -> Backend:
    """Engine factory for mount type "cubbyhole" (options and clock are unused)."""
    del options, now
    return cubbyhole_backend()
