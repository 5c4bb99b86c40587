"""What the primary-side server asks of core (implemented by the lead in core).

The :class:`ReplicationServer` knows nothing about which secondaries exist: it asks the
registry whether a certificate's secondary id may replicate, whether this node is the
active node of the primary cluster, and reports every contact with a secondary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vaultraft.replication.interfaces import Mode


@dataclass(frozen=True)
class PrimaryState:
    """This node's view of its primary cluster.

    ``epoch`` increases whenever the primary's active node changes (carried in every Wal and
    Heartbeat frame for fencing). ``active_addr`` is the replication address of the active
    node when this node is a standby (None if unknown).
    """

    is_active: bool
    lineage: str
    epoch: int
    active_addr: str | None = None


@dataclass(frozen=True)
class SecondaryContact:
    """One observation of a secondary: on connect, on every Ack, and on disconnect."""

    secondary_id: str
    mode: Mode
    connected: bool
    remote_index: int
    last_heartbeat: float  # unix time of the last frame received from the secondary
    peer: str  # "host:port" of the secondary's connection


class SecondaryRegistry(Protocol):
    """Core's replication bookkeeping, as seen by the server. Every method is synchronous,
    cheap and must not block (they run on the event loop)."""

    def authorize(self, secondary_id: str) -> Mode | None:
        """The mode ``secondary_id`` was activated for; None if unknown or revoked."""
        ...

    def primary_state(self) -> PrimaryState:
        """Whether this node is the primary's active node, and its lineage and epoch."""
        ...

    def on_contact(self, contact: SecondaryContact) -> None:
        """Record a contact (must not block; called on the event loop)."""
        ...
