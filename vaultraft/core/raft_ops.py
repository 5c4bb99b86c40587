"""Raft operations on core: join, the bootstrap challenge, configuration, peers, step-down.

Glue between the HTTP handlers / sys paths and :mod:`vaultraft.core.raft_join`,
:mod:`vaultraft.core.cluster` and the Raft node. Node ids map to cluster addresses
through ``core/raft/nodes/<node_id>`` records written by the active node.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from typing import TYPE_CHECKING, Any

import msgpack
import structlog

from vaultraft.barrier import KEYRING_PATH
from vaultraft.core import raft_removal
from vaultraft.core.seal_manager import ROOT_KEY_KEY
from vaultraft.core.seal_state import HSM_ROOT_KEY_KEY
from vaultraft.logical import InvalidRequest, NotLeader, Sealed, StorageEntry
from vaultraft.raft.node import RaftPhysical
from vaultraft.raft.tls import address_ips

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.core")

NODES_PREFIX = "raft/nodes/"  # under core/
RESTORE_MARKER_KEY = "core/raft/snapshot-restore"  # raw record written by raft_snapshot restores
SYNC_WAIT = 60.0


def _raft(core: "Core") -> RaftPhysical:
    if core.cluster.raft is None:
        raise InvalidRequest("raft storage is not in use")
    return core.cluster.raft


async def register_node(core: "Core", node_id: str, cluster_addr: str, api_addr: str, non_voter: bool = False,
                        *, replication_addr: str = "") -> None:
    """Record node id → addresses (replicated) so peers can be named by id."""
    u = core.unsealed
    assert u.sys_view is not None
    rec = {"node_id": node_id, "address": cluster_addr, "api_addr": api_addr, "voter": not non_voter,
           "replication_addr": replication_addr}
    await u.sys_view.put(StorageEntry(NODES_PREFIX + node_id, json.dumps(rec).encode()))
    await refresh_non_voters(core)


async def refresh_non_voters(core: "Core") -> None:
    """Tell the Raft layer which non-voters may follow the log (from the node records).
    Runs when this node becomes active and after every registration or removal."""
    raft = core.cluster.raft
    if raft is not None:
        records = await node_records(core)
        raft.non_voters = frozenset(str(r.get("address")) for r in records.values() if r.get("voter") is False)


async def node_records(core: "Core") -> dict[str, dict[str, Any]]:
    """Every registered node by id.

    A current member without a record of its own (its record was replaced by a forced
    snapshot restore from another cluster) is named from the membership the restore
    recorded in its raw marker.
    """
    u = core.unsealed
    assert u.sys_view is not None
    out: dict[str, dict[str, Any]] = {}
    for name in await u.sys_view.list(NODES_PREFIX):
        e = await u.sys_view.get(NODES_PREFIX + name)
        if e is not None:
            out[name] = json.loads(e.value)
    raft = core.cluster.raft
    marker = read_marker(await core.physical.get(RESTORE_MARKER_KEY)) if raft is not None else None
    if raft is not None and marker is not None and isinstance(marker.get("members"), list):
        members = set(raft.status().peers) | {raft.self_addr}
        known = {r.get("address") for r in out.values()}
        for rec in marker["members"]:
            if isinstance(rec, dict) and rec.get("address") in members - known and rec.get("node_id") not in out:
                out[str(rec["node_id"])] = dict(rec)
    return out


def read_marker(raw: bytes | None) -> dict[str, Any] | None:
    """The snapshot-restore marker record (raw msgpack), or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        m = msgpack.unpackb(raw, raw=False)
    except Exception:  # msgpack raises several unrelated types
        return None
    return m if isinstance(m, dict) and isinstance(m.get("id"), str) else None


# ---- joiner side ---------------------------------------------------------------------------


async def join(core: "Core", leader_api_addr: str, non_voter: bool = False) -> None:
    """``sys/storage/raft/join`` on a new node: fetch the challenge; unseal finishes it."""
    raft = _raft(core)
    if not leader_api_addr:
        raise InvalidRequest("leader_api_addr is required")
    if await core.seals.config() is not None:
        raise InvalidRequest("node is already initialized; a joining node must have empty storage")
    await core.joiner.fetch_challenge(leader_api_addr, raft.node_id, non_voter)
    pending = core.joiner.pending
    if pending is not None and pending.hsm_root_key_blob and core.seals.auto_seal_configured():
        # An auto-unseal node on the cluster's HSM proves itself without unseal keys.
        root_key, keyring = await core.seals.open_joined_records(pending.hsm_root_key_blob, pending.keyring_blob)
        pending.keyring_blob = keyring
        await core.finish_join(root_key)


async def complete_join(core: "Core", root_key: bytes) -> None:
    """After the joiner's unseal keys produced ``root_key``: answer, join, sync, unseal."""
    raft = _raft(core)
    non_voter = core.joiner.pending is not None and core.joiner.pending.non_voter
    transport, peers = await core.joiner.answer(root_key, raft.node_id, raft.self_addr, core.settings.api_addr,
                                             core.settings.replication_addr, raft.accepts_non_voter)
    await raft.stop_consensus()
    await asyncio.to_thread(raft.store.wipe)
    shutil.rmtree(raft.raft_dir, ignore_errors=True)
    await raft.start_consensus(transport, peers=peers, voter=not non_voter)
    loop = asyncio.get_running_loop()
    end = loop.time() + SYNC_WAIT
    while await raft.get(KEYRING_PATH) is None \
            or (await raft.get(ROOT_KEY_KEY) is None and await raft.get(HSM_ROOT_KEY_KEY) is None) \
            or await core.seals.config() is None:
        core.seals.forget_config()
        if loop.time() > end:
            raise InvalidRequest("joined the raft cluster but did not receive its data in time")
        await asyncio.sleep(0.1)
    core.joiner.pending = None
    log.info("raft_join_synced", applied_index=raft.applied_index())


# ---- active side -------------------------------------------------------------------------------


async def issue_challenge(core: "Core", server_id: str) -> dict[str, Any]:
    """``sys/storage/raft/bootstrap/challenge`` on the active node."""
    _raft(core)
    if core.sealed:
        raise Sealed()
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    if not server_id:
        raise InvalidRequest("no server id provided")
    cfg = await core.seals.config()
    root_blob = await core.barrier.raw_get(ROOT_KEY_KEY)
    keyring_blob = await core.physical.get(KEYRING_PATH)
    hsm_blob = await core.barrier.raw_get(HSM_ROOT_KEY_KEY)
    if cfg is None or (root_blob is None and hsm_blob is None) or keyring_blob is None:
        raise InvalidRequest("this node is not initialized")
    challenge = core.challenges.issue(server_id, core.barrier)
    return {
        "hsm_root_key_blob": base64.b64encode(hsm_blob or b"").decode(),
        "challenge": base64.b64encode(challenge).decode(),
        "seal_config": cfg.to_dict(),
        "root_key_blob": base64.b64encode(root_blob or b"").decode(),
        "keyring_blob": base64.b64encode(keyring_blob).decode(),
    }


async def accept_answer(core: "Core", body: dict[str, Any]) -> dict[str, Any]:
    """``sys/storage/raft/bootstrap/answer`` on the active node: verify, certify, add."""
    raft = _raft(core)
    if core.sealed:
        raise Sealed()
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    server_id = str(body.get("server_id") or "")
    cluster_addr = str(body.get("cluster_addr") or "")
    public_key = str(body.get("public_key") or "")
    if not server_id or not cluster_addr or not public_key:
        raise InvalidRequest("server_id, cluster_addr and public_key are required")
    try:
        answer = base64.b64decode(str(body.get("answer") or ""), validate=True)
    except ValueError:
        raise InvalidRequest("answer must be base64") from None
    core.challenges.verify(server_id, answer)
    ca = await core.cluster.load_ca(core.unsealed.sys_view)
    cert = ca.issue(cluster_addr, public_key.encode(), ips=address_ips(cluster_addr))
    peers = sorted(set(raft.status().peers) | {raft.self_addr})
    # Record the node while the current configuration can still commit it; the joiner
    # must be running before a configuration that includes it can commit anything.
    non_voter = bool(body.get("non_voter"))
    await register_node(core, server_id, cluster_addr, str(body.get("api_addr") or ""), non_voter,
                        replication_addr=str(body.get("replication_addr") or ""))
    if cluster_addr not in peers and not non_voter:  # a non-voter follows without joining the configuration
        await raft.add_peer(cluster_addr, wait=False)
    log.info("raft_peer_admitted", server_id=server_id, address=cluster_addr, voter=not non_voter)
    return {"peers": peers, "tls_cert": cert.cert_pem.decode(), "ca_cert": ca.cert_pem.decode()}


async def configuration(core: "Core") -> dict[str, Any]:
    """``sys/storage/raft/configuration``: Vault's shape."""
    raft = _raft(core)
    st = raft.status()
    records = await node_records(core)
    by_addr = {r["address"]: r for r in records.values()}
    servers = []
    for addr in sorted(set(st.peers) | {raft.self_addr} | _non_voter_addrs(records)):
        rec = by_addr.get(addr, {})
        servers.append({
            "node_id": rec.get("node_id", raft.node_id if addr == raft.self_addr else addr),
            "address": addr,
            "leader": addr == (st.leader_addr or ""),
            "protocol_version": "3",
            "voter": rec.get("voter", True) and addr in set(st.peers) | ({raft.self_addr} if st.voter else set()),
        })
    return {"config": {"index": st.commit_index, "servers": servers}}


def _non_voter_addrs(records: dict[str, dict[str, Any]]) -> set[str]:
    return {str(r["address"]) for r in records.values() if r.get("voter") is False and r.get("address")}


async def remove_peer(core: "Core", server_id: str) -> None:
    """``sys/storage/raft/remove-peer``: drop a member by node id (or address)."""
    raft = _raft(core)
    records = await node_records(core)
    addr = records[server_id]["address"] if server_id in records else server_id
    non_voter = addr in _non_voter_addrs(records) and addr not in set(raft.status().peers)
    if addr not in set(raft.status().peers) and not non_voter:
        raise InvalidRequest(f"no peer with node id {server_id!r}")
    if non_voter:  # not in the configuration: cut it off before the record's deletion can reach it
        raft.non_voters = raft.non_voters - {addr}
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while addr in raft.status().non_voters and loop.time() < end:
            await asyncio.sleep(0.02)
    else:
        await raft.remove_peer(addr)
    u = core.unsealed
    name = server_id if server_id in records else next((n for n, r in records.items() if r.get("address") == addr), "")
    if name and u.sys_view is not None:
        await u.sys_view.delete(NODES_PREFIX + name)
    await refresh_non_voters(core)
    ca = core.cluster.ca
    if ca is not None and name:  # tell it, so that it stops instead of waiting as an orphan
        await raft_removal.notify_removed(ca, str(records[name].get("api_addr") or ""), addr, raft.applied_index())


async def autopilot_state(core: "Core") -> dict[str, Any]:
    """``sys/storage/raft/autopilot/state``: health per server from the leader's view."""
    raft = _raft(core)
    st = raft.status()
    records = await node_records(core)
    by_addr = {r["address"]: r for r in records.values()}
    servers: dict[str, Any] = {}
    healthy_count = 0
    members = sorted(set(st.peers) | {raft.self_addr})
    for addr in sorted(_non_voter_addrs(records) - set(members)):  # followers that never count for a quorum
        rec = by_addr.get(addr, {})
        node_id = str(rec.get("node_id", addr))
        following = addr in st.non_voters
        servers[node_id] = {
            "id": node_id, "name": node_id, "address": addr, "node_status": "alive" if following else "left",
            "last_contact": "0.000s" if following else "never", "last_term": st.term,
            "last_index": st.match_index.get(addr, 0), "healthy": following, "stable_since": "",
            "status": "non-voter", "version": "", "upgrade_version": "", "redundancy_zone": "",
            "node_type": "non-voter",
        }
    for addr in members:
        rec = by_addr.get(addr, {})
        node_id = rec.get("node_id", raft.node_id if addr == raft.self_addr else addr)
        is_self = addr == raft.self_addr
        contact = 0.0 if is_self else st.last_contact.get(addr, 1e9)
        healthy = is_self or (addr in st.connected and contact < 5.0)
        healthy_count += healthy
        servers[node_id] = {
            "id": node_id, "name": node_id, "address": addr, "node_status": "alive" if healthy else "left",
            "last_contact": f"{contact:.3f}s" if contact < 1e8 else "never",
            "last_term": st.term, "last_index": st.applied_index if is_self else st.match_index.get(addr, 0),
            "healthy": healthy, "stable_since": "", "status": "leader" if is_self and st.is_leader else "voter",
            "version": "", "upgrade_version": "", "redundancy_zone": "", "node_type": "voter",
        }
    quorum = len(members) // 2 + 1
    voters = sorted(n for n, s in servers.items() if s["status"] != "non-voter")
    non_voters = sorted(n for n, s in servers.items() if s["status"] == "non-voter")
    out: dict[str, Any] = {
        "healthy": healthy_count >= quorum, "failure_tolerance": max(0, healthy_count - quorum),
        "leader": raft.node_id if st.is_leader else "", "voters": voters, "servers": servers,
        "optimistic_failure_tolerance": max(0, healthy_count - quorum),
    }
    if non_voters:
        out["non_voters"] = non_voters
    return out


async def step_down(core: "Core") -> None:
    """``sys/step-down``: hand leadership to another member (no-op when alone)."""
    raft = _raft(core)
    await raft.transfer_leadership()
