"""Seals: how the barrier's root key is protected at rest (Shamir shares today, HSM later).

Layer rule: seal imports neither core, barrier, storage nor logical; it works on bytes.
"""

from vaultraft.seal.shamir import combine, split
from vaultraft.seal.shamir_seal import (
    DUPLICATE_GENERATE_ROOT,
    DUPLICATE_REKEY,
    RECOVERY_CONFIG_PATH,
    ROOT_KEY_PATH,
    SEAL_CONFIG_PATH,
    RootKeyUnwrapError,
    SealConfig,
    SealConfigError,
    ShareError,
    UnsealProgress,
    unwrap_root_key,
    wrap_root_key,
)

__all__ = [
    "DUPLICATE_GENERATE_ROOT",
    "DUPLICATE_REKEY",
    "RECOVERY_CONFIG_PATH",
    "ROOT_KEY_PATH",
    "SEAL_CONFIG_PATH",
    "RootKeyUnwrapError",
    "SealConfig",
    "SealConfigError",
    "ShareError",
    "UnsealProgress",
    "combine",
    "split",
    "unwrap_root_key",
    "wrap_root_key",
]
