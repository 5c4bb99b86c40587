"""sys/key-status, sys/rotate, sys/seal, sys/leader, sys/ha-status, sys/internal/ui/mounts."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from vaultraft.core.mounts import normalize_path
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import NotFound, Operation, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def rfc3339(ts: float | dt.datetime) -> str:
    """UTC RFC 3339 with nanoseconds, as Go formats time.Time (epoch seconds or datetime)."""
    t = ts.astimezone(dt.timezone.utc) if isinstance(ts, dt.datetime) else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}000Z"


async def leader_status(core: "Core") -> dict[str, Any]:
    """Vault's ``sys/leader`` body for this node."""
    applied = core.physical.applied_index()
    raft = core.cluster.raft
    if raft is None:  # not HA (inmem): Vault reports no leader and no raft indexes
        return {"ha_enabled": False, "is_self": False, "active_time": "0001-01-01T00:00:00Z",
                "leader_address": "", "leader_cluster_address": "", "performance_standby": False,
                "performance_standby_last_remote_wal": 0}
    body: dict[str, Any] = {
        "ha_enabled": raft is not None,
        "is_self": core.active,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": core.settings.api_addr if core.active else "",
        "leader_cluster_address": core.settings.cluster_addr if core.active else "",
        "performance_standby": core.ha_role() == "perf_standby",
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": raft.commit_index(),
        "raft_applied_index": applied,
    }
    if not core.active and not core.sealed:
        try:
            info = await core.leader_info()
        except Exception:  # sealed meanwhile
            info = None
        if info is not None:
            body["leader_address"] = info.api_addr
            body["leader_cluster_address"] = info.cluster_addr
    return body


def paths(core: "Core") -> list[Path]:
    """Small operational endpoints."""

    async def key_status(req: Request, d: FieldData) -> Response:
        term, install_time, encryptions = core.barrier.key_status()
        return Response(data={"term": term, "install_time": rfc3339(install_time), "encryptions": encryptions})

    async def rotate(req: Request, d: FieldData) -> None:
        await core.barrier.rotate()

    async def seal(req: Request, d: FieldData) -> None:
        await core.seal()

    async def leader(req: Request, d: FieldData) -> Response:
        return Response(raw_body=await leader_status(core))

    async def ha_status(req: Request, d: FieldData) -> Response:
        from vaultraft.core import raft_ops

        raft = core.cluster.raft
        if raft is None:
            nodes = [{"hostname": "", "api_address": core.settings.api_addr, "cluster_address": core.settings.cluster_addr,
                      "active_node": True, "last_echo": None, "version": "", "upgrade_version": "", "redundancy_zone": ""}]
        else:
            st = raft.status()
            leader = st.leader_addr
            nodes = [{"hostname": rec.get("node_id", ""), "api_address": rec.get("api_addr", ""),
                      "cluster_address": rec.get("address", ""), "active_node": rec.get("address") == leader,
                      "last_echo": None, "version": "", "upgrade_version": "", "redundancy_zone": ""}
                     for rec in (await raft_ops.node_records(core)).values()]
        return Response(data={"nodes": nodes})

    async def ui_mount(req: Request, d: FieldData) -> Response:
        path = d.get("path")
        route = core.router.match(path)
        if route is None or route.prefix == "sys/":
            raise NotFound(f"preflight capability check returned 403, please ensure client's policies grant access to path \"{normalize_path(path)}\"")
        j = route.entry.to_json()
        return Response(data={**j, "path": route.prefix})

    return [
        Path(r"key-status", {Operation.READ: key_status}, synopsis="Provides information about the backend encryption key."),
        Path(r"rotate", {Operation.UPDATE: rotate}, synopsis="Rotates the backend encryption key used to persist data."),
        Path(r"seal", {Operation.UPDATE: seal}, synopsis="Seal the Vault."),
        Path(r"leader", {Operation.READ: leader}, synopsis="Returns the high availability status and current leader instance of Vault."),
        Path(r"ha-status", {Operation.READ: ha_status}, synopsis="Check the HA status of a Vault cluster."),
        Path(r"internal/ui/mounts/(?P<path>.+)", {Operation.READ: ui_mount},
             {"path": Field(FieldType.STRING, "The path of the mount.")}, synopsis="Information about a single mount."),
    ]
