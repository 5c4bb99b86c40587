"""The security barrier: the one place plaintext becomes ciphertext on its way to storage.

Layer rule: imports only :mod:`vaultraft.storage` (never logical/core); core translates
:class:`BarrierSealed` and friends into :mod:`vaultraft.logical.errors`.
"""

from vaultraft.barrier.aes_gcm import (
    KEYRING_PATH,
    Barrier,
    BarrierOp,
    KeyStatus,
    decrypt_detached,
)
from vaultraft.barrier.errors import (
    BarrierAlreadyInitialized,
    BarrierDecryptError,
    BarrierError,
    BarrierInvalidKey,
    BarrierNotInitialized,
    BarrierSealed,
    BarrierWriteError,
    ReplicatedReadOnly,
)
from vaultraft.barrier.keyring import CIPHERTEXT_VERSION, HEADER_BYTES, KEY_BYTES

__all__ = [
    "CIPHERTEXT_VERSION",
    "HEADER_BYTES",
    "KEYRING_PATH",
    "KEY_BYTES",
    "Barrier",
    "BarrierAlreadyInitialized",
    "BarrierDecryptError",
    "BarrierError",
    "BarrierInvalidKey",
    "BarrierNotInitialized",
    "BarrierOp",
    "BarrierSealed",
    "BarrierWriteError",
    "KeyStatus",
    "ReplicatedReadOnly",
    "decrypt_detached",
]
