"""The parsed server configuration: plain frozen values, no parsing logic.

Everything here is what :func:`vaultraft.config.load_config` hands to the server after all
files are merged and validated; consumers never see raw HCL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_LEASE_TTL = 768 * 3600
DEFAULT_MAX_LEASE_TTL = 768 * 3600
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:8200"
DEFAULT_MAX_REQUEST_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_REQUEST_DURATION = 90


class ConfigError(Exception):
    """A configuration file is unusable. ``str()`` is one line naming file, stanza/key and fault."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(message.split("\n"))
        super().__init__(one_line)
        self.message = one_line

    def __str__(self) -> str:
        return self.message


def split_host_port(address: str) -> tuple[str, int]:
    """``("127.0.0.1", 8200)`` from ``"127.0.0.1:8200"`` (IPv6 as ``"[::1]:8200"``).

    Raises ValueError with a short reason when the address has no port or a bad one.
    """
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError("missing ']' in IPv6 address")
        host, rest = address[1:end], address[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError("missing port")
        port_s = rest[1:]
    else:
        if ":" not in address:
            raise ValueError("missing port")
        host, port_s = address.rsplit(":", 1)
        if ":" in host:
            raise ValueError("IPv6 addresses must be written as [host]:port")
    if not port_s.isdigit():
        raise ValueError(f'port "{port_s}" is not a number')
    port = int(port_s)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """Inverse of :func:`split_host_port`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ListenerConfig:
    """One ``listener "tcp" {}`` stanza."""

    type: str = "tcp"
    address: str = DEFAULT_LISTEN_ADDRESS
    cluster_address: str = "127.0.0.1:8201"
    replication_address: str = ""  # the replication listener; default: cluster port + 1
    tls_disable: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_min_version: str = "tls12"
    tls_max_version: str = "tls13"
    tls_client_ca_file: str | None = None
    tls_require_and_verify_client_cert: bool = False
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    max_request_duration: int = DEFAULT_MAX_REQUEST_DURATION

    @property
    def host(self) -> str:
        """The host part of ``address`` (empty means all interfaces)."""
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        """The port part of ``address``."""
        return split_host_port(self.address)[1]

    @property
    def scheme(self) -> str:
        """``http`` when TLS is disabled, else ``https``."""
        return "http" if self.tls_disable else "https"


@dataclass(frozen=True)
class StorageConfig:
    """The ``storage`` (or legacy ``backend``) stanza: ``raft`` or ``inmem``.

    ``retry_join`` keeps each ``retry_join {}`` block as a raw dict; ``options`` keeps every
    other key of the stanza (raft tuning knobs) for the storage layer to interpret.
    """

    type: str
    path: str | None = None
    node_id: str | None = None
    retry_join: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SealConfigBlock:
    """One ``seal "<type>" {}`` stanza, kept raw for the seal layer.

    ``options`` may hold a PIN or key label, so it is left out of ``repr``.
    """

    type: str
    options: dict[str, str] = field(default_factory=dict, repr=False)
    disabled: bool = False


@dataclass(frozen=True)
class ReplicationConfig:
    """The ``replication {}`` stanza: WAL retention, synchronous DR and fenced auto-promotion.

    ``witness_tls_bundle`` is a PEM file from ``vaultraft witness issue`` (certificate, key
    and the witness CA); ``vault_options`` keeps Vault's own keys, accepted and unused.
    """

    wal_retention_entries: int = 100_000
    wal_retention_age: int = 3600
    dr_sync: bool = False
    dr_sync_timeout: float = 5.0  # seconds; fractions allowed ("500ms")
    auto_promote: bool = False
    failover_timeout: float = 10.0  # seconds; fractions allowed
    witness_address: str = ""
    witness_tls_bundle: str = ""
    vault_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    """The whole merged server configuration."""

    listeners: tuple[ListenerConfig, ...]
    storage: StorageConfig
    seals: tuple[SealConfigBlock, ...] = ()
    api_addr: str | None = None
    cluster_addr: str | None = None
    cluster_name: str | None = None
    log_level: str = "info"
    log_format: str = "standard"
    disable_mlock: bool = False
    ui: bool = False
    default_lease_ttl: int = DEFAULT_LEASE_TTL
    max_lease_ttl: int = DEFAULT_MAX_LEASE_TTL
    pid_file: str | None = None
    disable_performance_standby: bool = False
    disable_clustering: bool = False
    raw_storage_endpoint: bool = False
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    dev: bool = False
    files: tuple[str, ...] = ()

    @property
    def seal(self) -> SealConfigBlock | None:
        """The active (not ``disabled``) seal stanza; ``None`` means the default Shamir seal."""
        for s in self.seals:
            if not s.disabled:
                return s
        return None

    @property
    def migration_seal(self) -> SealConfigBlock | None:
        """A ``disabled = true`` seal stanza: the seal being migrated away from, if any."""
        for s in self.seals:
            if s.disabled:
                return s
        return None
