"""The vocabulary every layer shares: requests, responses, errors and storage views.

Engines and auth methods import only this package and :mod:`vaultraft.framework`.
"""

from vaultraft.logical.errors import (
    CheckAndSetMismatch,
    InternalError,
    InvalidRequest,
    NotFound,
    NotInitialized,
    NotLeader,
    PermissionDenied,
    PreconditionFailed,
    Sealed,
    UnsupportedOperation,
    UnsupportedPath,
    Unavailable,
    VaultError,
)
from vaultraft.logical.request import Auth, Operation, Request, Response, TokenInfo
from vaultraft.logical.storage import StorageEntry, StorageView, SubView, WriteOp

__all__ = [
    "Auth",
    "CheckAndSetMismatch",
    "InternalError",
    "InvalidRequest",
    "NotFound",
    "NotInitialized",
    "NotLeader",
    "Operation",
    "PermissionDenied",
    "PreconditionFailed",
    "Request",
    "Response",
    "Sealed",
    "StorageEntry",
    "StorageView",
    "SubView",
    "TokenInfo",
    "UnsupportedOperation",
    "UnsupportedPath",
    "Unavailable",
    "VaultError",
    "WriteOp",
]
