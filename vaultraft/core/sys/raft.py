"""sys/storage/raft/* (configuration, remove-peer, autopilot state, snapshots) and sys/step-down.

The snapshot paths carry a binary body: the HTTP layer serves them with a streaming
handler that still runs them through core's pipeline (token, ACL with sudo, audit), and
hands over the file through :class:`vaultraft.core.raft_snapshot.Transfer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core import raft_ops, raft_snapshot
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def paths(core: "Core") -> list[Path]:
    """Raft membership and health, Vault's paths and shapes."""

    async def configuration(req: Request, d: FieldData) -> Response:
        return Response(data=await raft_ops.configuration(core))

    async def remove_peer(req: Request, d: FieldData) -> None:
        await raft_ops.remove_peer(core, d.get("server_id"))

    async def autopilot(req: Request, d: FieldData) -> Response:
        return Response(data=await raft_ops.autopilot_state(core))

    async def step_down(req: Request, d: FieldData) -> None:
        await raft_ops.step_down(core)

    async def snapshot_save(req: Request, d: FieldData) -> None:
        await raft_snapshot.save(core, req)

    async def snapshot_restore(req: Request, d: FieldData) -> None:
        await raft_snapshot.restore(core, req, force=False)

    async def snapshot_force(req: Request, d: FieldData) -> None:
        await raft_snapshot.restore(core, req, force=True)

    return [
        Path(r"storage/raft/configuration", {Operation.READ: configuration},
             synopsis="Returns the configuration of the raft cluster."),
        Path(r"storage/raft/remove-peer", {Operation.UPDATE: remove_peer},
             {"server_id": Field(FieldType.STRING, "The ID of the server to remove.", required=True)},
             synopsis="Remove a peer from the raft cluster."),
        Path(r"storage/raft/autopilot/state", {Operation.READ: autopilot},
             synopsis="Returns the state of the raft cluster under integrated storage as seen by autopilot."),
        Path(r"step-down", {Operation.UPDATE: step_down}, synopsis="Cause the node to give up active status."),
        Path(r"storage/raft/snapshot", {Operation.READ: snapshot_save, Operation.UPDATE: snapshot_restore},
             synopsis="Returns a snapshot of the current state of vault, or installs a snapshot."),
        Path(r"storage/raft/snapshot-force", {Operation.UPDATE: snapshot_force},
             synopsis="Installs the provided snapshot, returning the cluster to the state defined in it; "
                      "bypasses checks ensuring the unseal keys are consistent with the snapshot data."),
    ]
