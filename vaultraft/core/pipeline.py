"""The walk of one authenticated request: token → ACL → audit → router → backend → audit."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from vaultraft.audit import AuthInfo
from vaultraft.core.tokens import TokenEntry
from vaultraft.logical import (
    Operation,
    PermissionDenied,
    Request,
    Response,
    TokenInfo,
    UnsupportedPath,
    VaultError,
)

if TYPE_CHECKING:
    from vaultraft.core.core import Core

# Paths that need sudo on top of the operation's capability (Vault's PathsSpecial.Root).
_SUDO_PATTERNS = (
    r"sys/audit", r"sys/audit/.*", r"sys/auth/.+", r"sys/rotate", r"sys/rotate/config", r"sys/seal",
    r"sys/step-down", r"sys/raw(/.*)?", r"sys/leases/lookup/.*", r"sys/leases/revoke-prefix/.*",
    r"sys/leases/revoke-force/.*", r"auth/token/accessors/?", r"auth/token/revoke-orphan(/.*)?",
    r"sys/storage/raft/snapshot.*", r"sys/storage/raft/remove-peer",
    r"sys/rekey/backup", r"sys/rekey/recovery-key-backup", r"sys/rekey-recovery-key/backup",
    r"sys/replication/(dr|performance)/(primary|secondary)/.*",
)
# One alternation, matched once per request (same language as trying each pattern in turn).
_SUDO = re.compile("|".join(f"(?:{p})" for p in _SUDO_PATTERNS))


def needs_sudo(path: str) -> bool:
    """Whether Vault treats ``path`` as root-protected."""
    return _SUDO.fullmatch(path) is not None


def token_from_request(req: Request) -> str:
    """The raw client token, or "" (never logged)."""
    return req.client_token


def auth_info(entry: TokenEntry, now: float) -> AuthInfo:
    """What the audit log records about the caller (HMAC'd by the devices)."""
    ttl = 0 if not entry.expire_time else max(0, int(entry.expire_time - now))
    return AuthInfo(
        client_token=entry.id,
        accessor=entry.accessor,
        display_name=entry.display_name,
        policies=tuple(entry.policies),
        token_policies=tuple(entry.policies),
        metadata=dict(entry.meta),
        entity_id=entry.entity_id,
        token_type=entry.type,
        token_ttl=ttl,
    )


async def authenticate(core: "Core", token: str) -> TokenEntry:
    """The live entry for ``token``; PermissionDenied when missing, invalid or expired."""
    if not token:
        raise PermissionDenied()
    entry = await core.unsealed.tokens.lookup(token)
    if entry is None:
        raise PermissionDenied()
    return entry


def _derive(req: Request, **changes: Any) -> Request:
    """A shallow copy of ``req`` with some fields changed: ``dataclasses.replace`` without
    re-running ``__init__`` over every field (this runs twice per request)."""
    new = object.__new__(Request)
    new.__dict__.update(req.__dict__)
    new.__dict__.update(changes)
    return new


async def handle_request(core: "Core", req: Request, *, forwarded: TokenEntry | None = None) -> Response | None:
    """Authenticate, authorize, audit and route ``req`` (whose path is the full path).

    ``forwarded`` is the caller as a performance secondary authenticated it (a request it
    forwarded because it writes replicated state): its policies are checked here again,
    and it is neither looked up nor charged a use (the secondary did both)."""
    u = core.unsealed
    entry = forwarded if forwarded is not None else await authenticate(core, req.client_token)
    route = core.router.match(req.path)
    if route is None:
        raise UnsupportedPath(f"no handler for route \"{req.path}\". route entry not found.")
    rel = req.path[len(route.prefix):] if len(req.path) >= len(route.prefix) else ""
    routed = _derive(
        req,
        path=rel,
        mount_point=route.prefix,
        mount_type=route.entry.type,
        storage=route.view,
        token=TokenInfo(
            accessor=entry.accessor,
            policies=tuple(entry.policies),
            display_name=entry.display_name,
            entity_id=entry.entity_id,
            meta=dict(entry.meta),
            cubbyhole_id=entry.cubbyhole_id,
        ),
    )
    acl = await u.policies.acl(entry.policies)
    verdict = None
    if routed.operation is Operation.UPDATE:
        if not len(core.audit) and route.backend.create_is_update(rel):
            # The existence check would only choose between the create and update
            # capabilities (nobody audits the operation and the backend runs the same
            # handler): when the caller holds both, it cannot change the outcome.
            verdict = acl.allowed("update", req.path, routed.data)
            if not (verdict.allowed and acl.allowed("create", req.path, routed.data).allowed):
                verdict = None
        if verdict is None and await route.backend.exists(routed) is False:
            routed.operation = Operation.CREATE
    audited = _derive(routed, path=req.path)
    now = time.time()
    infos: list[AuthInfo] = []

    def info() -> AuthInfo | None:
        """The caller's audit record, built only when an audit device will read it."""
        if not len(core.audit):
            return None
        if not infos:
            infos.append(auth_info(entry, now))
        return infos[0]

    # Mount metadata for clients' KV-version detection: any valid token may ask (the
    # answer holds no secret; Vault's finer "has any access under the mount" check is
    # a documented gap).
    if routed.operation is not Operation.HELP and not req.path.startswith("sys/internal/ui/mounts/"):
        if verdict is None:
            verdict = acl.allowed(routed.operation.value, req.path, routed.data)
        if not verdict.allowed or (needs_sudo(req.path) and not verdict.root_privs):
            await core.audit.log_request(audited, info(), "permission denied")
            raise PermissionDenied()
        routed.sudo = verdict.root_privs
    routed.is_root = "root" in entry.policies
    used = entry if forwarded is not None else await u.tokens.use(entry)
    if used is None:
        raise PermissionDenied()
    try:
        await core.audit.log_request(audited, info(), None)
        try:
            resp = await route.backend.handle(routed)
        except VaultError as e:
            await core.audit.log_response(audited, None, info(), str(e))
            raise
        await core.audit.log_response(audited, resp, info(), None)
        return resp
    finally:
        if used.revocation_pending:
            await u.tokens.revoke_tree(entry.id)
