"""The physical layer: ordered bytes under string keys, written only in atomic batches.

Nothing here knows about keys or plaintext: values arriving here are already barrier
ciphertext (or, for the few seal records under ``core/``, sealed blobs). The Raft layer
sits behind the same :class:`Physical` interface and ships exactly these batches.
"""

from vaultraft.storage.batch import Batch, BatchDecodeError, Op, OpKind
from vaultraft.storage.physical import ApplyResult, Physical

__all__ = ["ApplyResult", "Batch", "BatchDecodeError", "Op", "OpKind", "Physical"]
