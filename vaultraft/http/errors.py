"""The one place where the error tree meets HTTP status codes."""

from __future__ import annotations

from vaultraft.logical import (
    InternalError,
    InvalidRequest,
    NotFound,
    NotInitialized,
    NotLeader,
    PermissionDenied,
    PreconditionFailed,
    Sealed,
    UnsupportedOperation,
    Unavailable,
    VaultError,
)

_STATUS: list[tuple[type[VaultError], int]] = [
    (InvalidRequest, 400),
    (NotInitialized, 400),
    (PermissionDenied, 403),
    (NotFound, 404),
    (UnsupportedOperation, 405),
    (PreconditionFailed, 412),
    (InternalError, 500),
    (Sealed, 503),
    (NotLeader, 503),
    (Unavailable, 503),
]


def status_for(err: VaultError) -> int:
    """The HTTP status Vault answers for ``err`` (500 for unknown server faults)."""
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500
