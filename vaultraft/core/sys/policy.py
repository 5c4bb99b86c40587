"""sys/policy and sys/policies/acl: CRUD of ACL policies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core.policy_store import PolicyStore

from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, NotFound, Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core

_NAME = {"name": Field(FieldType.STRING, "The name of the policy.")}


def paths(core: "Core") -> list[Path]:
    """Both the legacy sys/policy and the current sys/policies/acl families."""

    def store() -> PolicyStore:
        return core.unsealed.policies

    async def legacy_list(req: Request, d: FieldData) -> Response:
        names = await store().names()
        return Response(data={"keys": names, "policies": names}, mirror_data=True)

    async def acl_list(req: Request, d: FieldData) -> Response:
        return Response(data={"keys": await store().names()})

    async def read(req: Request, d: FieldData, *, legacy: bool) -> Response:
        name = d.get("name").lower()
        if name == "root":
            text = ""
        else:
            p = await store().get(name)
            if p is None:
                raise NotFound()
            text = p.raw
        data = {"name": name, "rules": text} if legacy else {"name": name, "policy": text}
        return Response(data=data, mirror_data=legacy)

    async def legacy_read(req: Request, d: FieldData) -> Response:
        return await read(req, d, legacy=True)

    async def acl_read(req: Request, d: FieldData) -> Response:
        return await read(req, d, legacy=False)

    async def write(req: Request, d: FieldData) -> None:
        text = d.get("policy") or (d.get("rules") if "rules" in d.schema else "")
        if not text:
            raise InvalidRequest("'policy' parameter not supplied or empty")
        await store().put(d.get("name"), text)

    async def delete(req: Request, d: FieldData) -> None:
        await store().delete(d.get("name"))

    body = {**_NAME, "policy": Field(FieldType.STRING, "The rules of the policy (HCL or JSON).")}
    legacy_body = {**body, "rules": Field(FieldType.STRING, "The rules of the policy (deprecated: use policy).")}
    return [
        Path(r"policy/?", {Operation.READ: legacy_list, Operation.LIST: legacy_list}, synopsis="List the configured access control policies."),
        Path(r"policy/(?P<name>.+)", {Operation.READ: legacy_read, Operation.UPDATE: write, Operation.DELETE: delete},
             legacy_body, synopsis="Read, modify, or delete an access control policy."),
        Path(r"policies/acl/?", {Operation.LIST: acl_list}, synopsis="List the configured access control policies."),
        Path(r"policies/acl/(?P<name>.+)", {Operation.READ: acl_read, Operation.UPDATE: write, Operation.DELETE: delete},
             body, synopsis="Read, modify, or delete an access control policy."),
    ]
