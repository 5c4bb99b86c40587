"""sys/storage/raft/* (configuration, remove-peer, autopilot state) and sys/step-down."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core import raft_ops
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

    return [
        Path(r"storage/raft/configuration", {Operation.READ: configuration},
             synopsis="Returns the configuration of the raft cluster."),
        Path(r"storage/raft/remove-peer", {Operation.UPDATE: remove_peer},
             {"server_id": Field(FieldType.STRING, "The ID of the server to remove.", required=True)},
             synopsis="Remove a peer from the raft cluster."),
        Path(r"storage/raft/autopilot/state", {Operation.READ: autopilot},
             synopsis="Returns the state of the raft cluster under integrated storage as seen by autopilot."),
        Path(r"step-down", {Operation.UPDATE: step_down}, synopsis="Cause the node to give up active status."),
    ]
