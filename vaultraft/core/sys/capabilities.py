"""sys/capabilities, capabilities-self, capabilities-accessor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultraft.core.tokens import TokenEntry
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core

_PATHS = {
    "paths": Field(FieldType.COMMA_STRING_SLICE, "Paths on which capabilities are being queried."),
    "path": Field(FieldType.COMMA_STRING_SLICE, "Deprecated: use paths."),
}


def paths(core: "Core") -> list[Path]:
    """Capability queries for a token, the caller, or an accessor."""

    async def answer(entry: TokenEntry | None, d: FieldData) -> Response:
        wanted = list(d.get("paths") or []) + list(d.get("path") or [])
        if not wanted:
            raise InvalidRequest("missing paths")
        data: dict[str, Any] = {}
        if entry is None:
            for p in wanted:
                data[p] = ["deny"]
        else:
            acl = await core.unsealed.policies.acl(entry.policies)
            for p in wanted:
                data[p] = acl.capabilities(p.lstrip("/"))
        if len(wanted) == 1:
            data["capabilities"] = data[wanted[0]]
        return Response(data=data, mirror_data=True)

    async def for_token(req: Request, d: FieldData) -> Response:
        token = d.get("token")
        if not token:
            raise InvalidRequest("missing token")
        return await answer(await core.unsealed.tokens.lookup(token), d)

    async def for_self(req: Request, d: FieldData) -> Response:
        token = d.get("token") or req.client_token
        return await answer(await core.unsealed.tokens.lookup(token), d)

    async def for_accessor(req: Request, d: FieldData) -> Response:
        acc = d.get("accessor")
        if not acc:
            raise InvalidRequest("missing accessor")
        entry = await core.unsealed.tokens.lookup_accessor(acc)
        if entry is None:
            raise InvalidRequest("invalid accessor")
        return await answer(entry, d)

    tok = {**_PATHS, "token": Field(FieldType.STRING, "Token for which capabilities are being queried.")}
    acc = {**_PATHS, "accessor": Field(FieldType.STRING, "Accessor of the token.")}
    return [
        Path(r"capabilities", {Operation.UPDATE: for_token}, tok, synopsis="Fetches the capabilities of the given token on the given path."),
        Path(r"capabilities-self", {Operation.UPDATE: for_self}, tok, synopsis="Fetches the capabilities of the caller's token on the given path."),
        Path(r"capabilities-accessor", {Operation.UPDATE: for_accessor}, acc, synopsis="Fetches the capabilities of the token associated with the given accessor."),
    ]
