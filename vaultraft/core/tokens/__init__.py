"""Vault's token store: service tokens, their storage indexes and the ``auth/token/`` mount."""

from vaultraft.core.tokens.backend import ROOT_PATHS, build_backend
from vaultraft.core.tokens.entry import REVOCATION_PENDING, TokenEntry, lookup_data, new_token_id
from vaultraft.core.tokens.store import TokenStore

__all__ = [
    "REVOCATION_PENDING",
    "ROOT_PATHS",
    "TokenEntry",
    "TokenStore",
    "build_backend",
    "lookup_data",
    "new_token_id",
]
