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
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import msgpack
import structlog

from vaultraft.core.replication.manager import ReplicationManager
from vaultraft.core.replication.records import (
    ReplicationRecord,
    SecondaryEntry,
    delete_record,
    save_record,
    stored_epoch,
)
from vaultraft.logical import InvalidRequest, NotFound, NotLeader, PermissionDenied
from vaultraft.raft.tls import ClusterCA
from vaultraft.replication.activation import (
    ActivationToken,
    BundleError,
    seal_bundle,
)

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

_NAMES = {"dr": "DR", "performance": "performance"}


def _kind(kind: str) -> str:
    if kind not in _NAMES:
        raise InvalidRequest(f"unknown replication kind {kind!r}")
    return kind


async def enable_primary(core: "Core", primary_cluster_addr: str = "", kind: str = "dr") -> list[str]:
    """Make this cluster a primary of ``kind`` (sharing the replication CA, lineage and
    epoch with its other primary role, if any; new ones otherwise)."""
    m = await _active_manager(core)
    _kind(kind)
    existing = m.records.get(kind)
    if existing is not None and existing.mode == "primary":
        raise InvalidRequest(f"{_NAMES[kind]} replication is already enabled as a primary on this cluster")
    if m.secondary_record() is not None:
        raise InvalidRequest("this cluster is a replication secondary; promote it instead")
    other = m.primary_record()
    if other is not None:
        rec = replace(other, kind=kind, secondaries=(), primary_cluster_addr=primary_cluster_addr,
                      operation_token_sha256="")
    else:
        cluster_id = str(uuid.uuid4())
        ca = ClusterCA.create("vaultraft-replication-" + cluster_id)
        rec = ReplicationRecord(kind=kind, mode="primary", cluster_id=cluster_id, lineage=str(uuid.uuid4()),
                                epoch=max(1, await stored_epoch(m._view())), primary_cluster_addr=primary_cluster_addr,
                                ca_cert_pem=ca.cert_pem.decode(), ca_key_pem=ca.key_pem.decode())
    await m.key_sync.publish_now()  # refused (400) while a seal migration is pending
    await save_record(m._view(), rec)
    m.set_record(kind, rec)
    m.poke()
    log.info("replication_primary_enabled", kind=kind)
    return [ENABLE_WARNING.format(role="primary")]


def _primary(m: ReplicationManager, kind: str) -> ReplicationRecord:
    rec = m.records.get(_kind(kind))
    if rec is None or rec.mode != "primary":
        raise InvalidRequest(f"this cluster is not a {_NAMES[kind]} primary")
    return rec


async def secondary_token(core: "Core", secondary_id: str, ttl: int, secondary_public_key: str = "",
                          kind: str = "dr") -> dict[str, Any]:
    """A one-time activation token for secondary ``secondary_id`` (Vault's wrap_info shape).

    With ``secondary_public_key`` (from the secondary's ``generate-public-key``) the token
    carries the activation bundle encrypted to that key, so the secondary never calls this
    cluster's API."""
    m = await _active_manager(core)
    rec = _primary(m, kind)
    if not secondary_id:
        raise InvalidRequest("missing required 'id' parameter")
    if len(secondary_id) > 64 or not all(c.isalnum() or c in "._-" for c in secondary_id):
        raise InvalidRequest("id must be 1-64 characters of letters, digits, '.', '_' or '-'")
    for r in m.records.values():
        existing = r.secondary(secondary_id) if r.mode == "primary" else None
        if existing is not None and not existing.revoked:
            raise InvalidRequest(f"a secondary with id {secondary_id!r} already exists; revoke it first")
    ttl = ttl or DEFAULT_TOKEN_TTL
    secret = secrets.token_bytes(32)
    expires = int(time.time()) + ttl
    entry = SecondaryEntry(id=secondary_id, mode=kind, secret_sha256=hashlib.sha256(secret).hexdigest(),
                           expires_at=expires)
    bundle = b""
    if secondary_public_key:
        entry = replace(entry, activated=True)
        bundle = await _bundle(core, rec, secondary_id, secondary_public_key)
    rec = rec.with_secondary(entry)
    await save_record(m._view(), rec)
    m.set_record(kind, rec)
    token = ActivationToken(
        secondary_id=secondary_id, mode="dr" if kind == "dr" else "performance", secret=secret, primary_api_addr=core.settings.api_addr,
        primary_cluster_addrs=tuple(await _primary_addrs(core, rec)), ca_pem=rec.ca_cert_pem.encode(),
        expires_at=expires, bundle=bundle,
    ).encode()
    log.info("replication_secondary_token_created", kind=kind, secondary_id=secondary_id, ttl=ttl)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"token": token, "accessor": "", "ttl": ttl, "creation_time": created,
            "creation_path": f"sys/replication/{kind}/primary/secondary-token", "wrapped_accessor": ""}


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
    identity, the primary's root key and where the primary is. The key holders record the
    secondary adopts is published first, so its bulk sync carries the current one."""
    await core.replication.key_sync.publish_now()
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


async def activate(core: "Core", secondary_id: str, secret_b64: str, public_key: str,
                   api_addr: str = "") -> dict[str, Any]:
    """The internal call a secondary makes with its one-time token: consume the token and
    return the activation bundle encrypted to the secondary's fresh ``public_key``."""
    m = await _active_manager(core)
    try:
        secret = base64.b64decode(secret_b64, validate=True)
    except ValueError:
        raise PermissionDenied() from None
    for kind, rec in list(m.records.items()):
        entry = rec.secondary(secondary_id) if rec.mode == "primary" else None
        if entry is None or entry.revoked or entry.activated or not entry.secret_matches(secret):
            continue
        if time.time() > entry.expires_at:
            raise InvalidRequest("activation token has expired")
        bundle = await _bundle(core, rec, secondary_id, public_key)
        rec = rec.with_secondary(replace(entry, activated=True, api_address=api_addr[:512]))
        await save_record(m._view(), rec)
        m.set_record(kind, rec)
        log.info("replication_secondary_activating", kind=kind, secondary_id=secondary_id)
        return {"bundle": base64.b64encode(bundle).decode()}
    raise PermissionDenied()


async def revoke_secondary(core: "Core", secondary_id: str, kind: str = "dr") -> None:
    """Revoke a secondary: its connections close and it can never reconnect."""
    m = await _active_manager(core)
    rec = _primary(m, kind)
    s = rec.secondary(secondary_id)
    if s is None:
        raise InvalidRequest(f"no secondary with id {secondary_id!r}")
    rec = rec.with_secondary(replace(s, revoked=True))
    await save_record(m._view(), rec)
    m.set_record(kind, rec)
    if m.server is not None:
        m.server.disconnect(secondary_id)
    log.info("replication_secondary_revoked", kind=kind, secondary_id=secondary_id)


async def demote_primary(core: "Core", kind: str = "dr") -> list[str]:
    """Turn this primary into a secondary with no primary (a DR one stops serving clients;
    both wait for ``update-primary``)."""
    m = await _active_manager(core)
    rec = _primary(m, kind)
    demoted = ReplicationRecord(kind=kind, mode="secondary", cluster_id=rec.cluster_id, epoch=rec.epoch)
    await save_record(m._view(), demoted)
    m.set_record(kind, demoted)
    perf = m.perf
    if kind == "dr" and perf is not None and perf.mode == "primary":
        # its performance secondaries follow whichever cluster is the primary now: they
        # need a token from it (update-primary); this cluster stops serving them
        await delete_record(m._view(), "performance")
        m.set_record("performance", None)
        log.info("replication_performance_primary_disabled_by_demotion")
    if kind == "dr":
        await core.enter_dr_secondary()
    m.poke()
    log.info("replication_primary_demoted", kind=kind, epoch=rec.epoch)
    return [f"This cluster is being demoted to a {_NAMES[kind]} secondary."]


async def disable_primary(core: "Core", kind: str = "dr") -> list[str]:
    """Stop being a primary of ``kind``; its secondaries lose their stream."""
    m = await _active_manager(core)
    rec = _primary(m, kind)
    await delete_record(m._view(), kind)
    m.set_record(kind, None)
    if m.server is not None:
        for s in rec.secondaries:
            m.server.disconnect(s.id)
    m.poke()
    log.info("replication_primary_disabled", kind=kind)
    return [f"This cluster is no longer a {_NAMES[kind]} primary; its secondaries must be re-activated."]


async def paths_filter(core: "Core", secondary_id: str, mode: str | None = None,
                       paths: list[str] | None = None) -> dict[str, Any]:
    """Read (``mode`` None) or set a performance secondary's mount paths filter."""
    m = await _active_manager(core)
    rec = _primary(m, "performance")
    s = rec.secondary(secondary_id)
    if s is None:
        raise InvalidRequest(f"no performance secondary with id {secondary_id!r}")
    if mode is None:
        if not s.filter_mode:
            raise NotFound()
        return {"mode": s.filter_mode, "paths": list(s.filter_paths)}
    if mode not in ("allow", "deny"):
        raise InvalidRequest("mode must be \"allow\" or \"deny\"")
    norm = tuple(sorted({p.strip("/") + "/" for p in (paths or []) if p.strip("/")}))
    rec = rec.with_secondary(replace(s, filter_mode=mode, filter_paths=norm))
    await save_record(m._view(), rec)
    m.set_record("performance", rec)
    if m.server is not None:
        m.server.disconnect(secondary_id)  # it reconnects and resyncs under the new filter
    return {"mode": mode, "paths": list(norm)}


async def delete_paths_filter(core: "Core", secondary_id: str) -> None:
    """Remove a performance secondary's paths filter."""
    m = await _active_manager(core)
    rec = _primary(m, "performance")
    s = rec.secondary(secondary_id)
    if s is None:
        raise InvalidRequest(f"no performance secondary with id {secondary_id!r}")
    rec = rec.with_secondary(replace(s, filter_mode="", filter_paths=()))
    await save_record(m._view(), rec)
    m.set_record("performance", rec)
    if m.server is not None:
        m.server.disconnect(secondary_id)


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
    from vaultraft.core.replication.seal_stream import UnwrappingSource
    from vaultraft.raft.replica import RaftWalSource

    return await UnwrappingSource(RaftWalSource(raft), core.barrier, core.seals).digest("dr")
