"""Telling a node it was removed from the Raft cluster (``remove-peer``), and what it does then.

Why: a removed member keeps running. Its former peers refuse it, but it cannot tell a
removal from a partition, so it would go on as a standby forever (and, as a voter, keep
calling elections nobody answers). Vault 1.19 reports such a node as
``removed_from_cluster``; vaultraft also makes it stop.

How: once the removal is committed, the active node sends the removed node's API a
notice signed with the cluster CA key over (cluster id, the node's Raft address, an index
at or after the removal). The removed node accepts it only while unsealed (it needs the CA
certificate, which lives behind the barrier), only for its own address and cluster, and
only if the index is beyond what it has applied: the entry that removed it never reaches
it, while a node that was removed and joined again has applied far past that index, so a
replayed notice cannot remove it a second time. It then records a marker in its Raft
directory, leaves consensus and seals; unsealing it again is refused until its storage is
wiped (then it can join again).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from vaultraft.logical import InvalidRequest, Sealed

if TYPE_CHECKING:
    from vaultraft.core import Core
    from vaultraft.raft.node import RaftPhysical
    from vaultraft.raft.tls import ClusterCA

log = structlog.get_logger("vaultraft.core")

NOTICE_PATH = "sys/storage/raft/bootstrap/removed"
_MARKER = "removed.json"
_NOTICE_TIMEOUT = 5.0
REMOVED_MESSAGE = ("this node was removed from the raft cluster (remove-peer); wipe its storage path "
                   "to join it to a cluster again")


def notice_bytes(cluster_id: str, address: str, index: int) -> bytes:
    """What the CA key signs: domain separator, cluster id, Raft address, index."""
    return b"\0".join([b"vaultraft raft removal v1", cluster_id.encode(), address.encode(), str(index).encode()])


def marker_path(raft: RaftPhysical) -> str:
    """Where a removed node records its removal (beside pysyncobj's journal)."""
    return os.path.join(raft.data_dir, "raft", _MARKER)


def was_removed(raft: RaftPhysical | None) -> bool:
    """Whether this node accepted a removal notice."""
    return raft is not None and os.path.exists(marker_path(raft))


async def notify_removed(ca: ClusterCA, api_addr: str, address: str, index: int) -> bool:
    """Best effort: send the removed node at ``api_addr`` its notice; True when accepted."""
    if not api_addr:
        return False
    body = {"address": address, "index": index,
            "signature": base64.b64encode(ca.sign(notice_bytes(ca.cluster_id, address, index))).decode()}
    url = api_addr.rstrip("/") + "/v1/" + NOTICE_PATH
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_NOTICE_TIMEOUT)) as s, \
                s.post(url, json=body) as r:
            ok = r.status < 300
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        log.warning("raft_removal_notice_failed", address=address, error=type(e).__name__)
        return False
    log.info("raft_removal_notice_sent", address=address, accepted=ok)
    return ok


def _write_marker(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())


async def accept_removal(core: Core, body: dict[str, Any]) -> None:
    """On the removed node: check the notice, record the removal, leave consensus, seal.
    Raises Sealed (no CA certificate to check it with) or InvalidRequest (not for us)."""
    raft, ca = core.cluster.raft, core.cluster.ca
    if raft is None:
        raise InvalidRequest("this node does not use raft storage")
    if ca is None or core.sealed:
        raise Sealed()
    try:
        address = str(body["address"])
        index = int(body["index"])
        signature = base64.b64decode(str(body["signature"]), validate=True)
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("a removal notice needs address, index and signature") from None
    if address != raft.self_addr or not ca.verify(notice_bytes(ca.cluster_id, address, index), signature):
        raise InvalidRequest("removal notice is not for this node")
    if index <= raft.applied_index():
        raise InvalidRequest("stale removal notice")
    await asyncio.to_thread(_write_marker, marker_path(raft), {"address": address, "index": index})
    log.warning("raft_removed_from_cluster", address=address, index=index)
    await core.seal()
