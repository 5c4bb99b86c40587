"""Barrier exceptions. Core translates them into :mod:`vaultraft.logical.errors` classes.

Messages are Vault's barrier strings and never contain a key, a value or a path's data.
"""

from __future__ import annotations


class BarrierError(Exception):
    """Base of every barrier failure."""


class BarrierSealed(BarrierError):
    """An encrypted read or write while the barrier is sealed (Vault: ``Vault is sealed``)."""

    def __init__(self, message: str = "Vault is sealed") -> None:
        super().__init__(message)


class BarrierAlreadyInitialized(BarrierError):
    """``initialize`` found an existing keyring (Vault: ``Vault is already initialized``)."""

    def __init__(self, message: str = "Vault is already initialized") -> None:
        super().__init__(message)


class BarrierNotInitialized(BarrierError):
    """``unseal`` found no keyring (Vault: ``Vault is not initialized``)."""

    def __init__(self, message: str = "Vault is not initialized") -> None:
        super().__init__(message)


class BarrierInvalidKey(BarrierError):
    """The root key does not open the keyring (Vault: ``Unseal failed, invalid key``)."""

    def __init__(self, message: str = "Unseal failed, invalid key") -> None:
        super().__init__(message)


class BarrierDecryptError(BarrierError):
    """A stored ciphertext is malformed, tampered with, moved, or of an unknown term."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"decryption failed: {reason}")
        self.reason = reason


class BarrierWriteError(BarrierError):
    """The physical layer rejected a barrier-internal write (e.g. the keyring)."""


class ReplicatedReadOnly(BarrierError):
    """A write of replicated state on a performance secondary: only its primary may make it
    (core forwards the whole request there)."""

    def __init__(self, message: str = "cannot write replicated state on a performance secondary") -> None:
        super().__init__(message)
