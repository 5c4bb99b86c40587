"""sys/replication/* paths that need a client token (sudo): a primary's management and a
cluster's activation as a DR secondary. The status paths and a DR secondary's operations
are served by the HTTP layer without a token (see ``http/sys_replication.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core.replication import ops
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def paths(core: "Core") -> list[Path]:
    """Vault's DR replication management paths."""

    async def primary_enable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.enable_primary(core, d.get("primary_cluster_addr") or ""))

    async def secondary_token(req: Request, d: FieldData) -> Response:
        info = await ops.secondary_token(core, d.get("id"), int(d.get("ttl") or 0), d.get("secondary_public_key") or "")
        body = {"request_id": req.request_id, "lease_id": "", "renewable": False, "lease_duration": 0,
                "data": {"token": info["token"]} if d.get("secondary_public_key") else None,
                "wrap_info": info, "warnings": None, "auth": None}
        return Response(raw_body=body)

    async def revoke(req: Request, d: FieldData) -> None:
        await ops.revoke_secondary(core, d.get("secondary_id"))

    async def demote(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.demote_primary(core))

    async def disable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.disable_primary(core))

    async def secondary_enable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.activate_secondary(core, d.get("token"), d.get("primary_api_addr") or "",
                                                              d.get("ca_file") or ""))

    async def public_key(req: Request, d: FieldData) -> Response:
        return Response(data={"secondary_public_key": await ops.generate_public_key(core)})

    async def merkle_root(req: Request, d: FieldData) -> Response:
        index, root = await ops.primary_merkle_root(core)
        return Response(data={"index": index, "merkle_root": root})

    s = FieldType.STRING
    return [
        Path(r"replication/dr/primary/enable", {Operation.UPDATE: primary_enable},
             {"primary_cluster_addr": Field(s, "The cluster address secondaries dial (default: this node's).")},
             synopsis="Enables DR replication as a primary on this cluster."),
        Path(r"replication/dr/primary/secondary-token", {Operation.UPDATE: secondary_token},
             {"id": Field(s, "An opaque identifier for the secondary.", required=True),
              "ttl": Field(FieldType.DURATION, "How long the activation token is valid.", default=1800),
              "secondary_public_key": Field(s, "The secondary's public key from generate-public-key.")},
             synopsis="Generates a DR secondary activation token."),
        Path(r"replication/dr/primary/revoke-secondary", {Operation.UPDATE: revoke},
             {"secondary_id": Field(s, "The id of the secondary to revoke.", required=True)},
             synopsis="Revokes a DR secondary's ability to replicate."),
        Path(r"replication/dr/primary/demote", {Operation.UPDATE: demote},
             synopsis="Demotes this DR primary to a secondary."),
        Path(r"replication/dr/primary/disable", {Operation.UPDATE: disable},
             synopsis="Disables DR replication on this primary."),
        Path(r"replication/dr/secondary/enable", {Operation.UPDATE: secondary_enable},
             {"token": Field(s, "The activation token from the primary.", required=True),
              "primary_api_addr": Field(s, "The primary's API address (overrides the token's)."),
              "ca_file": Field(s, "A CA file to verify the primary's API certificate."),
              "ca_path": Field(s, "Ignored; use ca_file.")},
             synopsis="Enables this cluster as a DR secondary (its data is replaced by the primary's)."),
        Path(r"replication/dr/secondary/generate-public-key", {Operation.UPDATE: public_key},
             synopsis="Generates a key pair for activating this cluster with a public-key token."),
        Path(r"replication/dr/primary/merkle-root", {Operation.READ: merkle_root},
             synopsis="The digest of what this primary's DR secondaries hold."),
    ]
