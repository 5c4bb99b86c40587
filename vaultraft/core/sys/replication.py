"""sys/replication/* paths that need a client token (sudo): a primary's management and a
cluster's activation as a DR secondary. The status paths and a DR secondary's operations
are served by the HTTP layer without a token (see ``http/sys_replication.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core.replication import ops, secondary_ops
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def paths(core: "Core") -> list[Path]:
    """Vault's DR and performance replication management paths."""
    return [*_kind_paths(core, "dr"), *_kind_paths(core, "performance"), *_performance_only(core)]


def _kind_paths(core: "Core", kind: str) -> list[Path]:
    name = "DR" if kind == "dr" else "performance"

    async def primary_enable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.enable_primary(core, d.get("primary_cluster_addr") or "", kind))

    async def secondary_token(req: Request, d: FieldData) -> Response:
        info = await ops.secondary_token(core, d.get("id"), int(d.get("ttl") or 0),
                                         d.get("secondary_public_key") or "", kind)
        body = {"request_id": req.request_id, "lease_id": "", "renewable": False, "lease_duration": 0,
                "data": {"token": info["token"]} if d.get("secondary_public_key") else None,
                "wrap_info": info, "warnings": None, "auth": None}
        return Response(raw_body=body)

    async def revoke(req: Request, d: FieldData) -> None:
        await ops.revoke_secondary(core, d.get("secondary_id"), kind)

    async def demote(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.demote_primary(core, kind))

    async def disable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await ops.disable_primary(core, kind))

    async def secondary_enable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await secondary_ops.activate_secondary(
            core, d.get("token"), d.get("primary_api_addr") or "", d.get("ca_file") or "", kind=kind))

    async def public_key(req: Request, d: FieldData) -> Response:
        return Response(data={"secondary_public_key": await secondary_ops.generate_public_key(core)})

    s = FieldType.STRING
    base = f"replication/{kind}"
    return [
        Path(rf"{base}/primary/enable", {Operation.UPDATE: primary_enable},
             {"primary_cluster_addr": Field(s, "The cluster address secondaries dial (default: this node's).")},
             synopsis=f"Enables {name} replication as a primary on this cluster."),
        Path(rf"{base}/primary/secondary-token", {Operation.UPDATE: secondary_token},
             {"id": Field(s, "An opaque identifier for the secondary.", required=True),
              "ttl": Field(FieldType.DURATION, "How long the activation token is valid.", default=1800),
              "secondary_public_key": Field(s, "The secondary's public key from generate-public-key.")},
             synopsis=f"Generates a {name} secondary activation token."),
        Path(rf"{base}/primary/revoke-secondary", {Operation.UPDATE: revoke},
             {"secondary_id": Field(s, "The id of the secondary to revoke.", required=True)},
             synopsis=f"Revokes a {name} secondary's ability to replicate."),
        Path(rf"{base}/primary/demote", {Operation.UPDATE: demote},
             synopsis=f"Demotes this {name} primary to a secondary."),
        Path(rf"{base}/primary/disable", {Operation.UPDATE: disable},
             synopsis=f"Disables {name} replication on this primary."),
        Path(rf"{base}/secondary/enable", {Operation.UPDATE: secondary_enable},
             {"token": Field(s, "The activation token from the primary.", required=True),
              "primary_api_addr": Field(s, "The primary's API address (overrides the token's)."),
              "ca_file": Field(s, "A CA file to verify the primary's API certificate."),
              "ca_path": Field(s, "Ignored; use ca_file.")},
             synopsis=f"Enables this cluster as a {name} secondary (its data is replaced by the primary's)."),
        Path(rf"{base}/secondary/generate-public-key", {Operation.UPDATE: public_key},
             synopsis="Generates a key pair for activating this cluster with a public-key token."),
    ]


def _performance_only(core: "Core") -> list[Path]:
    async def promote(req: Request, d: FieldData) -> Response:
        return Response(warnings=await secondary_ops.promote(core, None, d.get("primary_cluster_addr") or "",
                                                             "performance"))

    async def update_primary(req: Request, d: FieldData) -> Response:
        return Response(warnings=await secondary_ops.update_primary(
            core, None, d.get("token"), d.get("primary_api_addr") or "", d.get("ca_file") or "", "performance"))

    async def disable(req: Request, d: FieldData) -> Response:
        return Response(warnings=await secondary_ops.disable_secondary(core, None, "performance"))

    async def filter_read(req: Request, d: FieldData) -> Response:
        return Response(data=await ops.paths_filter(core, d.get("id")))

    async def filter_write(req: Request, d: FieldData) -> Response:
        return Response(data=await ops.paths_filter(core, d.get("id"), d.get("mode") or "", d.get("paths") or []))

    async def filter_delete(req: Request, d: FieldData) -> None:
        await ops.delete_paths_filter(core, d.get("id"))

    async def merkle_root(req: Request, d: FieldData) -> Response:
        index, root = await ops.primary_merkle_root(core)
        return Response(data={"index": index, "merkle_root": root})

    s = FieldType.STRING
    return [
        Path(r"replication/performance/secondary/promote", {Operation.UPDATE: promote},
             {"primary_cluster_addr": Field(s, "The cluster address secondaries dial after promotion.")},
             synopsis="Promotes this performance secondary to a primary."),
        Path(r"replication/performance/secondary/update-primary", {Operation.UPDATE: update_primary},
             {"token": Field(s, "An activation token from the new primary.", required=True),
              "primary_api_addr": Field(s, "The primary's API address (overrides the token's)."),
              "ca_file": Field(s, "A CA file to verify the primary's API certificate.")},
             synopsis="Points this performance secondary at a new primary."),
        Path(r"replication/performance/secondary/disable", {Operation.UPDATE: disable},
             synopsis="Disables performance replication on this secondary."),
        Path(r"replication/performance/primary/paths-filter/(?P<id>.+)",
             {Operation.READ: filter_read, Operation.UPDATE: filter_write, Operation.DELETE: filter_delete},
             {"id": Field(s, "The secondary's id.", required=True),
              "mode": Field(s, "allow or deny: which mounts the secondary receives."),
              "paths": Field(FieldType.COMMA_STRING_SLICE, "Mount paths the mode applies to.")},
             synopsis="Reads, sets or removes a performance secondary's mount filter."),
        Path(r"replication/dr/primary/merkle-root", {Operation.READ: merkle_root},
             synopsis="The digest of what this primary's DR secondaries hold."),
    ]
