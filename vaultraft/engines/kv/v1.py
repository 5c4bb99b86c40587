"""KV version 1 (and "generic"): Vault's pass-through secret storage.

Each secret is one storage entry at its own path under the mount's view, holding the
request body as JSON. The same pass-through logic backs the cubbyhole engine, which only
differs in which view a request sees and in not attaching a lease duration.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from vaultraft.engines.kv.common import (
    accept_arbitrary_input,
    decode_json,
    encode_json,
    folder,
    list_response,
    ttl_seconds,
)
from vaultraft.framework import Backend, Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, NotFound, Operation, Request, Response, StorageEntry, StorageView

# Vault's system default lease TTL (768h), reported as lease_duration on KV v1 reads.
DEFAULT_LEASE_TTL = 768 * 3600

ViewFor = Callable[[Request], Awaitable[StorageView]]

KV_V1_HELP = (
    "The kv backend reads and writes arbitrary secrets to the backend. The secrets are\n"
    "encrypted/decrypted by Vault: they are never stored unencrypted in the backend and\n"
    "the backend never has an opportunity to see the unencrypted value.\n\n"
    "TTLs can be set on a per-secret basis. These TTLs will be sent down when that secret\n"
    "is read, and it is assumed that some outside process will revoke and/or replace the\n"
    "secret at that path."
)
KV_V1_SYNOPSIS = (
    "Pass-through secret storage to the storage backend, allowing you to read/write "
    "arbitrary data into secret storage."
)
KV_V1_DESCRIPTION = (
    "The pass-through backend reads and writes arbitrary data into secret storage, "
    "encrypting it along the way.\n\nA TTL can be specified when writing with the \"ttl\" "
    "field. If given, the duration of leases returned by this backend will be set to this "
    "value."
)


class Passthrough:
    """Read/write/delete/list of arbitrary JSON objects on the view ``view_for`` gives.

    ``lease_ttl`` is the default ``lease_duration`` of reads (overridden by a stored
    ``ttl``/``lease`` field); ``None`` attaches no lease duration at all (cubbyhole).
    ``strict_path`` makes an empty path an error on read/write (cubbyhole's behaviour).
    """

    def __init__(self, view_for: ViewFor, *, lease_ttl: int | None, strict_path: bool) -> None:
        self._view_for = view_for
        self._lease_ttl = lease_ttl
        self._strict_path = strict_path

    async def exists(self, req: Request, d: FieldData) -> bool:
        """Whether an entry is stored at the path (decides create vs update)."""
        view = await self._view_for(req)
        return await view.get(d.get("path")) is not None

    async def read(self, req: Request, d: FieldData) -> Response | None:
        """The stored object, or NotFound."""
        view = await self._view_for(req)
        path: str = d.get("path")
        if self._strict_path and path == "":
            raise InvalidRequest("missing path")
        entry = await view.get(path)
        if entry is None:
            raise NotFound()
        data = decode_json(entry.value)
        resp = Response(data=data)
        if self._lease_ttl is not None:
            ttl = None
            for name in ("ttl", "lease"):
                if name in data:
                    ttl = ttl_seconds(data[name])
                    break
            resp.lease_duration = self._lease_ttl if ttl is None else ttl
        return resp

    async def write(self, req: Request, d: FieldData) -> Response | None:
        """Store the whole request body at the path (204)."""
        view = await self._view_for(req)
        accept_arbitrary_input(d)
        path: str = d.get("path")
        # Vault checks the path first on kv and the body first on cubbyhole.
        checks = [(path == "", "missing path"), (not req.data, "missing data fields")]
        for failed, message in (reversed(checks) if self._strict_path else checks):
            if failed:
                raise InvalidRequest(message)
        await view.put(StorageEntry(path, encode_json(req.data)))
        return None

    async def delete(self, req: Request, d: FieldData) -> Response | None:
        """Remove the entry at the path; deleting nothing is not an error (204)."""
        view = await self._view_for(req)
        await view.delete(d.get("path"))
        return None

    async def list_keys(self, req: Request, d: FieldData) -> Response | None:
        """Immediate children of the path as ``{"keys": [...]}``; nothing is a 404."""
        view = await self._view_for(req)
        return list_response(await view.list(folder(d.get("path"))))

    def path(self, *, synopsis: str, description: str, path_description: str) -> Path:
        """The single catch-all framework path serving every operation."""
        return Path(
            pattern=r"(?P<path>.*)",
            operations={
                Operation.READ: self.read,
                Operation.CREATE: self.write,
                Operation.UPDATE: self.write,
                Operation.DELETE: self.delete,
                Operation.LIST: self.list_keys,
            },
            fields={"path": Field(FieldType.STRING, path_description)},
            exists=self.exists,
            synopsis=synopsis,
            description=description,
        )


async def _mount_view(req: Request) -> StorageView:
    return req.view()


def kv_v1_backend(lease_ttl: int = DEFAULT_LEASE_TTL) -> Backend:
    """A KV v1 backend; reads carry ``lease_ttl`` seconds unless the secret sets ``ttl``."""
    p = Passthrough(_mount_view, lease_ttl=lease_ttl, strict_path=False)
    return Backend(
        [p.path(synopsis=KV_V1_SYNOPSIS, description=KV_V1_DESCRIPTION,
                path_description="Location of the secret.")],
        help=KV_V1_HELP,
        backend_type="kv",
    )
