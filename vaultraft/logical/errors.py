"""One exception tree for the whole server.

Every error carries data, never an HTTP status: only :mod:`vaultraft.http` maps a class to
a status code. Messages are the strings Vault puts in ``{"errors": [...]}`` and must never
contain a secret, key or token.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base of every error a client may see. ``messages`` become ``errors`` in the body."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages: list[str] = list(messages)

    def __str__(self) -> str:
        return "; ".join(self.messages)


class InvalidRequest(VaultError):
    """The client sent something malformed or impossible (Vault: 400)."""


class CheckAndSetMismatch(InvalidRequest):
    """A KV v2 ``cas`` did not match the current version (Vault: 400)."""

    def __init__(self, message: str = "check-and-set parameter did not match the current version") -> None:
        super().__init__(message)


class PermissionDenied(VaultError):
    """Missing, invalid or insufficient token (Vault: 403 ``permission denied``)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("permission denied",)))


class NotFound(VaultError):
    """Nothing at this path (Vault: 404 with an empty ``errors`` list unless a message is given)."""


class UnsupportedPath(NotFound):
    """No backend path matches (Vault: 404 ``unsupported path``)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("unsupported path",)))


class UnsupportedOperation(VaultError):
    """The path exists but not for this operation (Vault: 405 ``unsupported operation``)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("unsupported operation",)))


class Sealed(VaultError):
    """The barrier is sealed (Vault: 503 ``Vault is sealed``)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("Vault is sealed",)))


class NotInitialized(VaultError):
    """Storage holds no seal configuration yet (Vault: 503 ``Vault is not initialized``)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("Vault is not initialized",)))


class NotLeader(VaultError):
    """This node is a standby; ``leader_addr`` is the active node's api_addr, if known."""

    def __init__(self, leader_addr: str | None, *messages: str) -> None:
        super().__init__(*(messages or ("node is not the active node",)))
        self.leader_addr = leader_addr


class Unavailable(VaultError):
    """The node cannot serve this right now (no quorum, leadership changing): Vault's 503."""


class PreconditionFailed(VaultError):
    """A consistency requirement (X-Vault-Index) could not be met in time (Vault: 412)."""


class InternalError(VaultError):
    """A fault of the server itself (Vault: 500). Never raised for bad client input."""
