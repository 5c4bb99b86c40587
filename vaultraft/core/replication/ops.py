"""The DR replication operations behind Vault's ``sys/replication/dr/*`` endpoints.

Primary side: enable, secondary-token, revoke-secondary, demote, disable, and the internal
activation call a secondary makes with its one-time token. Secondary side: enable (activate
with a token), promote, update-primary, disable, operation tokens. Every operation runs on
the active node; callers map ``NotLeader`` to forwarding as for any request.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
import structlog

from vaultraft.core.replication.manager import PendingActivation, ReplicationManager
from vaultraft.core.replication.records import ReplicationRecord, SecondaryEntry, delete_record, save_record
from vaultraft.logical import InvalidRequest, NotLeader, PermissionDenied
from vaultraft.raft.tls import ClusterCA
from vaultraft.replication.activation import (
    ActivationToken,
    BundleError,
    TokenError,
    generate_bundle_keypair,
    open_bundle,
    seal_bundle,
)
from vaultraft.storage.wal import CLUSTER_OWN_PREFIXES

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.replication")

DEFAULT_TOKEN_TTL = 1800
BUNDLE_VERSION = 1
ACTIVATE_TIMEOUT = 15.0
ENABLE_WARNING = ("This cluster is being enabled as a {role} for replication. Vault will be unavailable "
                  "for a brief period and will resume service shortly.")


def _context(secondary_id: str) -> bytes:
    return b"vaultraft-replication-activation:" + secondary_id.encode()


async def _active_manager(core: "Core") -> ReplicationManager:
    if core.cluster.raft is None:
        raise InvalidRequest("replication requires integrated storage (storage \"raft\")")
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    return core.replication


def _require_raft(core: "Core") -> None:
    if core.cluster.raft is None:
        raise InvalidRequest("replication requires integrated storage (storage \"raft\")")


# ---- primary side ------------------------------------------------------------------------


async def enable_primary(core: "Core", primary_cluster_addr: str = "") -> list[str]:
    """Make this cluster a DR primary (new replication CA, lineage and epoch)."""
    m = await _active_manager(core)
    if m.dr is not None and m.dr.mode == "primary":
        raise InvalidRequest("DR replication is already enabled as a primary on this cluster")
    if m.dr_secondary:
        raise InvalidRequest("this cluster is a DR secondary; promote it instead")
    cluster_id = str(uuid.uuid4())
    ca = ClusterCA.create("vaultraft-replication-" + cluster_id)
    rec = ReplicationRecord(kind="dr", mode="primary", cluster_id=cluster_id, lineage=str(uuid.uuid4()),
                            epoch=1, primary_cluster_addr=primary_cluster_addr,
                            ca_cert_pem=ca.cert_pem.decode(), ca_key_pem=ca.key_pem.decode())
    await save_record(m._view(), rec)
    m.dr = rec
    m.poke()
    log.info("replication_primary_enabled", kind="dr")
    return [ENABLE_WARNING.format(role="primary")]


def _primary(m: ReplicationManager) -> ReplicationRecord:
    if m.dr is None or m.dr.mode != "primary":
        raise InvalidRequest("this cluster is not a DR primary")
    return m.dr


async def secondary_token(core: "Core", secondary_id: str, ttl: int, secondary_public_key: str = "") -> dict[str, Any]:
    """A one-time activation token for secondary ``secondary_id`` (Vault's wrap_info shape).

    With ``secondary_public_key`` (from the secondary's ``generate-public-key``) the token
    carries the activation bundle encrypted to that key, so the secondary never calls this
    cluster's API."""
    m = await _active_manager(core)
    rec = _primary(m)
    if not secondary_id:
        raise InvalidRequest("missing required 'id' parameter")
    existing = rec.secondary(secondary_id)
    if existing is not None and not existing.revoked:
        raise InvalidRequest(f"a secondary with id {secondary_id!r} already exists; revoke it first")
    ttl = ttl or DEFAULT_TOKEN_TTL
    secret = secrets.token_bytes(32)
    expires = int(time.time()) + ttl
    entry = SecondaryEntry(id=secondary_id, mode="dr", secret_sha256=hashlib.sha256(secret).hexdigest(),
                           expires_at=expires)
    bundle = b""
    if secondary_public_key:
        entry = replace(entry, activated=True)
        bundle = await _bundle(core, rec, secondary_id, secondary_public_key)
    rec = rec.with_secondary(entry)
    await save_record(m._view(), rec)
    m.dr = rec
    token = ActivationToken(
        secondary_id=secondary_id, mode="dr", secret=secret, primary_api_addr=core.settings.api_addr,
        primary_cluster_addrs=tuple(await _primary_addrs(core, rec)), ca_pem=rec.ca_cert_pem.encode(),
        expires_at=expires, bundle=bundle,
    ).encode()
    log.info("replication_secondary_token_created", secondary_id=secondary_id, ttl=ttl)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"token": token, "accessor": "", "ttl": ttl, "creation_time": created,
            "creation_path": "sys/replication/dr/primary/secondary-token", "wrapped_accessor": ""}


async def _primary_addrs(core: "Core", rec: ReplicationRecord) -> list[str]:
    from vaultraft.core import raft_ops

    if rec.primary_cluster_addr:
        return [rec.primary_cluster_addr.split("://")[-1]]
    addrs = [core.settings.replication_addr] if core.settings.replication_addr else []
    for node in (await raft_ops.node_records(core)).values():
        a = node.get("replication_addr")
        if isinstance(a, str) and a and a not in addrs:
            addrs.append(a)
    return addrs


async def _bundle(core: "Core", rec: ReplicationRecord, secondary_id: str, public_key: str) -> bytes:
    """The activation bundle for ``secondary_id``, encrypted to ``public_key``: its client
    identity, the primary's root key and where the primary is."""
    ca = ClusterCA.from_pem(rec.cluster_id, rec.ca_cert_pem.encode(), rec.ca_key_pem.encode())
    node = ca.issue(secondary_id)
    plain = msgpack.packb({
        "v": BUNDLE_VERSION, "cluster_id": rec.cluster_id, "epoch": rec.epoch,
        "cert": node.cert_pem, "key": node.key_pem, "ca": rec.ca_cert_pem.encode(),
        "root_key": core.barrier.root_key(),
    }, use_bin_type=True)
    try:
        return seal_bundle(public_key, plain, _context(secondary_id))
    except (BundleError, ValueError) as e:
        raise InvalidRequest(f"invalid secondary_public_key: {e}") from None


async def activate(core: "Core", secondary_id: str, secret_b64: str, public_key: str) -> dict[str, Any]:
    """The internal call a secondary makes with its one-time token: consume the token and
    return the activation bundle encrypted to the secondary's fresh ``public_key``."""
    m = await _active_manager(core)
    rec = _primary(m)
    entry = rec.secondary(secondary_id)
    try:
        secret = base64.b64decode(secret_b64, validate=True)
    except ValueError:
        raise PermissionDenied() from None
    if entry is None or entry.revoked or entry.activated or not entry.secret_matches(secret):
        raise PermissionDenied()
    if time.time() > entry.expires_at:
        raise InvalidRequest("activation token has expired")
    bundle = await _bundle(core, rec, secondary_id, public_key)
    rec = rec.with_secondary(replace(entry, activated=True))
    await save_record(m._view(), rec)
    m.dr = rec
    log.info("replication_secondary_activating", secondary_id=secondary_id)
    return {"bundle": base64.b64encode(bundle).decode()}


async def revoke_secondary(core: "Core", secondary_id: str) -> None:
    """Revoke a secondary: its connections close and it can never reconnect."""
    m = await _active_manager(core)
    rec = _primary(m)
    if rec.secondary(secondary_id) is None:
        raise InvalidRequest(f"no secondary with id {secondary_id!r}")
    rec = m.revoked(secondary_id)
    await save_record(m._view(), rec)
    m.dr = rec
    if m.server is not None:
        m.server.disconnect(secondary_id)
    log.info("replication_secondary_revoked", secondary_id=secondary_id)


async def demote_primary(core: "Core") -> list[str]:
    """Turn this DR primary into a DR secondary with no primary (it stops serving clients
    and waits for ``update-primary``)."""
    m = await _active_manager(core)
    rec = _primary(m)
    demoted = ReplicationRecord(kind="dr", mode="secondary", cluster_id=rec.cluster_id, epoch=rec.epoch)
    await save_record(m._view(), demoted)
    m.dr = demoted
    await core.enter_dr_secondary()
    m.poke()
    log.info("replication_primary_demoted", epoch=rec.epoch)
    return ["This cluster is being demoted to a DR secondary; it no longer serves clients."]


async def disable_primary(core: "Core") -> list[str]:
    """Stop being a DR primary; every secondary loses its stream."""
    m = await _active_manager(core)
    _primary(m)
    await delete_record(m._view(), "dr")
    m.dr = None
    m.poke()
    log.info("replication_primary_disabled")
    return ["This cluster is no longer a DR primary; its secondaries must be re-activated."]


# ---- secondary side -----------------------------------------------------------------------


async def _fetch_bundle(token: ActivationToken, api_addr: str, ca_file: str, public_key: str) -> bytes:
    ssl_ctx: ssl.SSLContext | bool = True
    if api_addr.startswith("https://") and ca_file:
        ssl_ctx = ssl.create_default_context(cafile=ca_file)
    url = api_addr.rstrip("/") + "/v1/sys/replication/internal/activate"
    body = {"id": token.secondary_id, "secret": base64.b64encode(token.secret).decode(), "public_key": public_key}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ACTIVATE_TIMEOUT)) as s:
            async with s.post(url, json=body, ssl=ssl_ctx) as r:
                data = await r.json(content_type=None)
                if r.status >= 400:
                    errors = "; ".join(data.get("errors") or []) if isinstance(data, dict) else ""
                    raise InvalidRequest(f"error activating with the primary: {r.status} {errors}".strip())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise InvalidRequest(f"error contacting the primary at {api_addr}: {type(e).__name__}") from None
    try:
        return base64.b64decode(data["data"]["bundle"] if "data" in data else data["bundle"])
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("the primary's activation answer is malformed") from None


async def _own_items(core: "Core") -> list[tuple[str, bytes]]:
    """This cluster's own entries (plaintext), to keep across the switch to the primary's keys."""
    out: list[tuple[str, bytes]] = []
    stack = [p for p in CLUSTER_OWN_PREFIXES if p.endswith("/")]
    singles = [p for p in CLUSTER_OWN_PREFIXES if not p.endswith("/")]
    for key in singles:
        v = await core.barrier.get(key)
        if v is not None:
            out.append((key, v))
    while stack:
        prefix = stack.pop()
        for child in await core.barrier.list(prefix):
            if child.endswith("/"):
                stack.append(prefix + child)
                continue
            if prefix + child == "core/replication/dr":
                continue  # replaced by the new record
            v = await core.barrier.get(prefix + child)
            if v is not None:
                out.append((prefix + child, v))
    return out


async def activate_secondary(core: "Core", token_str: str, primary_api_addr: str = "", ca_file: str = "",
                             *, allow_secondary: bool = False) -> list[str]:
    """Become a DR secondary of the primary that issued ``token_str``: fetch the activation
    bundle, then let the client bulk-sync; this cluster's data is replaced by the primary's."""
    m = await _active_manager(core)
    if m.dr_primary:
        raise InvalidRequest("this cluster is a DR primary; demote it first")
    if m.dr_secondary and not allow_secondary:
        raise InvalidRequest("this cluster is already a DR secondary; use update-primary")
    try:
        token = ActivationToken.decode(token_str, now=time.time())
    except TokenError as e:
        raise InvalidRequest(f"invalid activation token: {e}") from None
    if token.mode != "dr":
        raise InvalidRequest("the token is not a DR secondary activation token")
    if token.bundle:
        priv = m.bundle_private_key
        if priv is None:
            raise InvalidRequest("this token was issued for a public key; run generate-public-key on this cluster first")
    else:
        priv, pub = generate_bundle_keypair()
        blob = await _fetch_bundle(token, primary_api_addr or token.primary_api_addr, ca_file, pub)
    try:
        plain = open_bundle(priv, token.bundle or blob, _context(token.secondary_id))
        b: dict[str, Any] = msgpack.unpackb(plain, raw=False)
        root_key = bytes(b["root_key"])
        rec = ReplicationRecord(
            kind="dr", mode="secondary", cluster_id=str(b["cluster_id"]), epoch=int(b["epoch"]),
            ca_cert_pem=bytes(b["ca"]).decode(), secondary_id=token.secondary_id, cert_pem=bytes(b["cert"]).decode(),
            key_pem=bytes(b["key"]).decode(), primary_api_addr=primary_api_addr or token.primary_api_addr,
            primary_cluster_addrs=tuple(token.primary_cluster_addrs),
            # update-primary keeps the DR operation token (it is revoked by delete or promote)
            operation_token_sha256=m.dr.operation_token_sha256 if allow_secondary and m.dr is not None else "",
        )
    except (BundleError, KeyError, TypeError, ValueError) as e:
        raise InvalidRequest(f"invalid activation bundle: {type(e).__name__}") from None
    own = await _own_items(core)
    import asyncio

    m.pending = PendingActivation(rec, root_key, own, asyncio.Event())
    await core.enter_dr_secondary()
    m.poke()
    log.info("replication_secondary_enabling", secondary_id=token.secondary_id)
    return [ENABLE_WARNING.format(role="secondary")]


async def generate_public_key(core: "Core") -> str:
    """A fresh key pair for a public-key activation; returns the public half."""
    m = await _active_manager(core)
    priv, pub = generate_bundle_keypair()
    m.bundle_private_key = priv
    return pub


async def check_operation_token(core: "Core", token: str) -> None:
    """PermissionDenied unless ``token`` is this DR secondary's current operation token."""
    m = core.replication
    if not token or not m.operation_token_valid(token):
        raise PermissionDenied()


async def promote(core: "Core", op_token: str, primary_cluster_addr: str = "") -> list[str]:
    """Promote this DR secondary to a DR primary (new lineage, higher epoch)."""
    _require_raft(core)
    m = await _active_manager(core)
    if not m.dr_secondary or m.pending is not None:
        raise InvalidRequest("this cluster is not a DR secondary")
    await check_operation_token(core, op_token)
    assert m.dr is not None
    seen = m.client.status().primary_epoch if m.client is not None else 0
    await m._stop_client()
    ca = ClusterCA.create("vaultraft-replication-" + m.dr.cluster_id)
    rec = ReplicationRecord(kind="dr", mode="primary", cluster_id=m.dr.cluster_id, lineage=str(uuid.uuid4()),
                            epoch=max(m.dr.epoch, seen) + 1, primary_cluster_addr=primary_cluster_addr,
                            ca_cert_pem=ca.cert_pem.decode(), ca_key_pem=ca.key_pem.decode())
    await save_record(m._view(), rec)
    m.dr = rec
    m.forget_operation_token()
    await core.leave_dr_secondary()
    m.poke()
    log.info("replication_secondary_promoted", epoch=rec.epoch)
    return ["This cluster is being promoted to a DR primary."]


async def update_primary(core: "Core", op_token: str, token_str: str, primary_api_addr: str = "",
                         ca_file: str = "") -> list[str]:
    """Point this DR secondary at a (new) primary with a fresh activation token."""
    m = await _active_manager(core)
    if not m.dr_secondary:
        raise InvalidRequest("this cluster is not a DR secondary")
    await check_operation_token(core, op_token)
    await m._stop_client()
    return await activate_secondary(core, token_str, primary_api_addr, ca_file, allow_secondary=True)


async def disable_secondary(core: "Core", op_token: str) -> list[str]:
    """Stop being a DR secondary: the cluster keeps its data and serves as a standalone one."""
    m = await _active_manager(core)
    if not m.dr_secondary or m.pending is not None:
        raise InvalidRequest("this cluster is not a DR secondary")
    await check_operation_token(core, op_token)
    await m._stop_client()
    await delete_record(m._view(), "dr")
    m.dr = None
    m.forget_operation_token()
    await core.leave_dr_secondary()
    return ["This cluster is no longer a DR secondary."]


async def merkle_check(core: "Core") -> dict[str, Any]:
    """Compare this secondary's replicated keyspace with its primary's at the same index."""
    m = core.replication
    if m.client is None:
        raise InvalidRequest("this DR secondary is not streaming from a primary")
    r = await m.client.merkle_check(30.0)
    return {
        "merkle_corruption_report": {"corrupted_root": not r.equal, "corrupted_tree_map": {},
                                     "last_corruption_check_epoch": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "primary_index": r.primary_index, "primary_root": r.primary_root,
        "secondary_index": r.secondary_index, "secondary_root": r.secondary_root, "equal": r.equal,
    }


async def primary_merkle_root(core: "Core") -> tuple[int, str]:
    """(index, digest) of what a DR secondary of this cluster holds."""
    raft = core.cluster.raft
    if raft is None:
        raise InvalidRequest("replication requires integrated storage (storage \"raft\")")
    from vaultraft.raft.replica import RaftWalSource

    return await RaftWalSource(raft).digest("dr")
