"""Core's link to Raft: consensus lifecycle, cluster TLS behind the barrier, HA roles.

Consensus runs only while a node is unsealed, because the cluster CA that lets a node
talk to its peers lives behind the barrier (as Vault's raft TLS keyring does). Roles
follow the log: the Raft leader that holds a quorum lease is the active node; every
other unsealed member is a standby. A single-node store (``inmem``) is always active.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from vaultraft.core import raft_removal
from vaultraft.logical import (
    InvalidRequest,
    NotLeader,
    StorageEntry,
    StorageView,
    Unavailable,
)
from vaultraft.raft.node import (
    CommitTimeout,
    ConsensusStopped,
    NotLeaderError,
    RaftPhysical,
)
from vaultraft.raft.tls import ClusterCA, NodeCert, address_ips
from vaultraft.raft.transport import make_transport_class, node_id_is_address

#: Largest Raft frame: a full append batch plus one maximal request (32 MiB).
MAX_FRAME_BYTES = 48 << 20


def cluster_transport(cert: NodeCert, accept_non_voter: Callable[[str], bool] | None = None) -> type:
    """The mutual-TLS pysyncobj transport for ``cert`` (peer identity = Raft address);
    ``accept_non_voter(address)`` admits non-voters (see RaftPhysical.accepts_non_voter)."""
    return make_transport_class(cert, max_frame_bytes=MAX_FRAME_BYTES, expected_peer_id=node_id_is_address,
                                accept_readonly=accept_non_voter)
from vaultraft.storage import Physical

log = structlog.get_logger("vaultraft.core")

TLS_KEY = "raft/tls"  # under core/: the cluster CA (replicated, barrier-encrypted)
LEADER_KEY = "leader"  # under core/: where the active node advertises itself
LEASE_WAIT = 15.0
ROLE_POLL = 0.05
#: How long a request waits, on a node that still leads the Raft log but whose quorum lease
#: lapsed for a moment, for the active role to come back before it is refused (see
#: Core._regain_active). pysyncobj gives up leadership after the same time without a quorum.
LEASE_LAPSE_WAIT = 1.0


@dataclass(frozen=True)
class LeaderInfo:
    """What the active node advertises in storage for standbys to forward to."""

    api_addr: str
    cluster_addr: str
    node_id: str
    replication_addr: str = ""

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @staticmethod
    def decode(raw: bytes) -> "LeaderInfo":
        d = json.loads(raw)
        return LeaderInfo(str(d["api_addr"]), str(d["cluster_addr"]), str(d["node_id"]),
                          str(d.get("replication_addr", "")))


class ClusterLink:
    """Drives a RaftPhysical for core; a no-op for single-node storage."""

    def __init__(self, physical: Physical) -> None:
        self.raft: RaftPhysical | None = physical if isinstance(physical, RaftPhysical) else None
        self._ca: ClusterCA | None = None

    @property
    def enabled(self) -> bool:
        """True for Raft storage."""
        return self.raft is not None

    @property
    def ca(self) -> ClusterCA | None:
        """The cluster CA, known while unsealed (and before init, the one being created)."""
        return self._ca

    @property
    def removed(self) -> bool:
        """Whether this node accepted a removal notice (see core/raft_removal.py)."""
        return raft_removal.was_removed(self.raft)

    def _transport(self, ca: ClusterCA) -> type:
        assert self.raft is not None
        # A node's certificate names its Raft address, so a peer can check that whoever
        # dials in as "host:port" really holds the certificate for that address.
        cert: NodeCert = ca.issue(self.raft.self_addr, ips=address_ips(self.raft.self_addr))
        return cluster_transport(cert, self.raft.accepts_non_voter)

    async def start_for_init(self, cluster_id: str) -> None:
        """Before init: a fresh cluster CA and a single-node group that elects itself."""
        if self.raft is None:
            return
        self._ca = ClusterCA.create(cluster_id)
        await self.raft.start_consensus(self._transport(self._ca), peers=[])
        await self.wait_lease()

    async def store_tls(self, core_view: StorageView) -> None:
        """After init (barrier unsealed): persist the cluster CA behind the barrier."""
        if self.raft is None or self._ca is None:
            return
        await core_view.put(StorageEntry(TLS_KEY, _ca_to_bytes(self._ca)))

    async def start_after_unseal(self, core_view: StorageView) -> None:
        """After unseal: read the cluster CA from the barrier and join consensus. A node that
        stayed in consensus while sealed keeps its transport unless the stored CA changed
        meanwhile (a forced snapshot restore of another cluster): then it rejoins with it."""
        if self.raft is None:
            return
        if self.removed:
            raise InvalidRequest(raft_removal.REMOVED_MESSAGE)
        self.raft.yield_leadership = False
        raw = await core_view.get(TLS_KEY)
        if raw is None:
            raise RuntimeError("cluster TLS material is missing from storage")
        ca = _ca_from_bytes(raw.value)
        if self.raft.running:
            if self._ca is not None and self._ca.cert_pem == ca.cert_pem:
                return
            await self.raft.stop_consensus()
        self._ca = ca
        await self.raft.start_consensus(self._transport(self._ca))

    def follow_sealed(self) -> None:
        """This node stays in consensus while sealed: it must not keep the leadership."""
        if self.raft is not None:
            self.raft.yield_leadership = True

    async def stop(self) -> None:
        """On seal or shutdown: leave consensus."""
        if self.raft is not None:
            await self.raft.stop_consensus()

    async def wait_lease(self, timeout: float = LEASE_WAIT) -> bool:
        """Wait until this node holds a leader lease; False on timeout."""
        if self.raft is None:
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if self.raft.has_lease():
                return True
            await asyncio.sleep(ROLE_POLL)
        return False

    def first_role_wait(self) -> float:
        """How long an unsealing node waits for a leader lease before settling as standby."""
        if self.raft is None:
            return 0.0
        if not self.raft.known_peers():
            return LEASE_WAIT
        return self.raft.tuning.election_max * 3

    async def read_barrier(self) -> None:
        """Before a read on the active node: prove leadership (no stale leader reads)."""
        if self.raft is None:
            return
        try:
            await self.raft.read_barrier()
        except (NotLeaderError, ConsensusStopped):
            raise NotLeader(None, "this node is no longer the active node") from None
        except CommitTimeout:
            raise Unavailable("could not confirm leadership with a quorum in time") from None

    def is_active(self) -> bool:
        """Whether this node may act as the active node right now."""
        return self.raft is None or self.raft.has_lease()

    def leads_log(self) -> bool:
        """Whether the Raft library believes this node leads (no quorum lease implied)."""
        return self.raft is not None and self.raft.is_leader()

    async def load_ca(self, core_view: StorageView | None) -> ClusterCA:
        """The cluster CA (read from the barrier once), for certifying joining nodes."""
        if self._ca is None:
            if core_view is None:
                raise RuntimeError("sealed")
            raw = await core_view.get(TLS_KEY)
            if raw is None:
                raise RuntimeError("cluster TLS material is missing from storage")
            self._ca = _ca_from_bytes(raw.value)
        return self._ca


def _ca_to_bytes(ca: ClusterCA) -> bytes:
    return json.dumps({"cluster_id": ca.cluster_id, "cert": ca.cert_pem.decode(), "key": ca.key_pem.decode()}).encode()


def _ca_from_bytes(raw: bytes) -> ClusterCA:
    d = json.loads(raw)
    return ClusterCA.from_pem(d["cluster_id"], d["cert"].encode(), d["key"].encode())
