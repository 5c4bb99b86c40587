"""Server configuration: Vault's HCL/JSON config files parsed into frozen values.

``load_config(paths)`` for ``server -config=...``; ``dev_config(address)`` for ``server -dev``.
"""

from vaultraft.config.model import (
    ConfigError,
    ListenerConfig,
    SealConfigBlock,
    ServerConfig,
    StorageConfig,
    join_host_port,
    split_host_port,
)
from vaultraft.config.parse import dev_config, load_config

__all__ = [
    "ConfigError",
    "ListenerConfig",
    "SealConfigBlock",
    "ServerConfig",
    "StorageConfig",
    "dev_config",
    "join_host_port",
    "load_config",
    "split_host_port",
]
