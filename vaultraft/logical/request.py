"""Request and response values that travel between http, core and backends."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaultraft.logical.storage import StorageView


class Operation(str, enum.Enum):
    """Vault's logical operations; ACL capabilities share these names."""

    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    LIST = "list"
    HELP = "help"


@dataclass(frozen=True)
class TokenInfo:
    """What a backend may know about the caller's token (never the token's raw id)."""

    accessor: str = ""
    policies: tuple[str, ...] = ()
    display_name: str = ""
    entity_id: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    # Stable per-token identifier for cubbyhole; derived, not the token itself.
    cubbyhole_id: str = ""


@dataclass
class Request:
    """One logical request, as routed to a backend.

    ``path`` is relative to the backend's mount once routed; ``mount_point`` is the mount
    (``secret/``). ``data`` holds the JSON body merged with query parameters for reads.
    """

    operation: Operation
    path: str
    data: dict[str, Any] = field(default_factory=dict)
    client_token: str = ""
    mount_point: str = ""
    mount_type: str = ""
    request_id: str = ""
    remote_addr: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    token: TokenInfo | None = None
    storage: StorageView | None = None
    # Set by core from the ACL: the caller holds the root policy / sudo on this path.
    is_root: bool = False
    sudo: bool = False

    def view(self) -> StorageView:
        """The backend's storage view; a routed request always has one."""
        if self.storage is None:
            raise RuntimeError("request has no storage view")
        return self.storage


@dataclass
class Auth:
    """The ``auth`` block of a response that issued a token (login, token create)."""

    client_token: str
    accessor: str
    policies: list[str]
    token_policies: list[str]
    metadata: dict[str, str] | None
    lease_duration: int
    renewable: bool
    entity_id: str = ""
    token_type: str = "service"
    orphan: bool = False
    num_uses: int = 0
    mfa_requirement: None = None

    def to_json(self) -> dict[str, Any]:
        """Vault's JSON shape of the auth block."""
        return {
            "client_token": self.client_token,
            "accessor": self.accessor,
            "policies": self.policies,
            "token_policies": self.token_policies,
            "identity_policies": None,
            "metadata": self.metadata,
            "lease_duration": self.lease_duration,
            "renewable": self.renewable,
            "entity_id": self.entity_id,
            "token_type": self.token_type,
            "orphan": self.orphan,
            "mfa_requirement": None,
            "num_uses": self.num_uses,
        }


@dataclass
class Response:
    """A backend's answer. ``None`` from a handler means 204 No Content.

    ``raw_body`` bypasses Vault's envelope (sys/* endpoints that answer bare JSON);
    ``status`` overrides the default 200 only where Vault does so.
    """

    data: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    auth: Auth | None = None
    lease_id: str = ""
    lease_duration: int = 0
    renewable: bool = False
    raw_body: Any = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Vault's older sys endpoints (sys/mounts, sys/auth, sys/audit, sys/policy) repeat
    # the keys of ``data`` at the top level of the body for compatibility.
    mirror_data: bool = False
