"""sys/audit and sys/audit-hash."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core.mounts import normalize_path
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def paths(core: "Core") -> list[Path]:
    """Enable, disable and list audit devices; hash a value as a device would."""

    async def list_devices(req: Request, d: FieldData) -> Response:
        return Response(data=core.audit.list(), mirror_data=True)

    async def enable(req: Request, d: FieldData) -> None:
        t = d.get("type")
        if not t:
            raise InvalidRequest("type is required")
        await core.unsealed.audit_table.enable(
            normalize_path(d.get("path")), t, dict(d.get("options") or {}), d.get("description"), d.get("local"))

    async def disable(req: Request, d: FieldData) -> None:
        await core.unsealed.audit_table.disable(normalize_path(d.get("path")))

    async def audit_hash(req: Request, d: FieldData) -> Response:
        return Response(data={"hash": core.audit.hash(normalize_path(d.get("path")), d.get("input"))})

    fields = {
        "path": Field(FieldType.STRING, "The name of the backend."),
        "type": Field(FieldType.STRING, "The type of the backend. Example: \"file\""),
        "description": Field(FieldType.STRING, "User-friendly description for this audit backend."),
        "options": Field(FieldType.KV_PAIRS, "Configuration options for the audit backend."),
        "local": Field(FieldType.BOOL, "Mark the audit device as a local device (not replicated)."),
    }
    return [
        Path(r"audit/?", {Operation.READ: list_devices}, synopsis="List the enabled audit devices."),
        Path(r"audit/(?P<path>.+)", {Operation.UPDATE: enable, Operation.DELETE: disable}, fields,
             synopsis="Enable or disable audit devices."),
        Path(r"audit-hash/(?P<path>.+)", {Operation.UPDATE: audit_hash},
             {"path": Field(FieldType.STRING, "The name of the backend."),
              "input": Field(FieldType.STRING, "The input to hash.")},
             synopsis="The hash of the given string via the given audit backend."),
    ]
