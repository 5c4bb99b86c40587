"""vaultraft: a Raft-replicated secrets store that speaks Vault's HTTP API."""

__version__ = "0.1.0"
VAULT_COMPAT_VERSION = "1.15.0"
