"""A secondary's operations: activation (enable, update-primary), promotion, disable, the DR
operation token check, and a performance secondary's forwarding of writes to its primary.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vaultraft.core.replication import backup
from vaultraft.core.replication.activating import PendingActivation, other_kind_staged
from vaultraft.core.replication.manager import ReplicationManager
from vaultraft.core.replication.ops import (
    ENABLE_WARNING,
    _active_manager,
    _context,
    _kind,
    _require_raft,
)
from vaultraft.core.replication.records import (
    ReplicationRecord,
    delete_record,
    save_record,
)
from vaultraft.core.replication.staging import STAGED_KEY, stage
from vaultraft.core.seal_replica import check_secondary_seal
from vaultraft.logical import (
    InvalidRequest,
    Operation,
    PermissionDenied,
    Request,
    Response,
    Unavailable,
    UnsupportedOperation,
)
from vaultraft.raft.replica import RaftWalSource
from vaultraft.raft.tls import ClusterCA
from vaultraft.replication.activation import (
    ActivationToken,
    BundleError,
    TokenError,
    generate_bundle_keypair,
    open_bundle,
)

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.replication")

ACTIVATE_TIMEOUT = 15.0
FORWARD_TIMEOUT = 30.0
FORWARD_MAX_SKEW = 60.0
#: How long a forwarded write waits for its own change to arrive on this secondary.
FORWARD_INDEX_WAIT = 5.0


async def _post_json(url: str, body: dict[str, Any], ca_file: str, timeout: float) -> tuple[int, Any]:
    ssl_ctx: ssl.SSLContext | bool = True
    if url.startswith("https://") and ca_file:
        ssl_ctx = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.post(url, json=body, ssl=ssl_ctx) as r:
            return r.status, await r.json(content_type=None)


async def _fetch_bundle(token: ActivationToken, api_addr: str, ca_file: str, public_key: str,
                        own_api_addr: str = "") -> bytes:
    url = api_addr.rstrip("/") + "/v1/sys/replication/internal/activate"
    body = {"id": token.secondary_id, "secret": base64.b64encode(token.secret).decode(), "public_key": public_key,
            "api_addr": own_api_addr}
    try:
        status, data = await _post_json(url, body, ca_file, ACTIVATE_TIMEOUT)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise InvalidRequest(f"error contacting the primary at {api_addr}: {type(e).__name__}") from None
    if status >= 400:
        errors = "; ".join(data.get("errors") or []) if isinstance(data, dict) else ""
        raise InvalidRequest(f"error activating with the primary: {status} {errors}".strip())
    try:
        return base64.b64decode(data["data"]["bundle"] if "data" in data else data["bundle"])
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("the primary's activation answer is malformed") from None


async def _open_activation(core: "Core", m: ReplicationManager, token: ActivationToken, primary_api_addr: str,
                           ca_file: str, kind: str, current: ReplicationRecord | None) -> tuple[ReplicationRecord, bytes]:
    """Use the token (fetch the bundle, or open the one it carries): the record to stage and
    the primary's root key. The token is spent once this returns."""
    if token.bundle:
        priv = m.bundle_private_key
        if priv is None:
            raise InvalidRequest("this token was issued for a public key; run generate-public-key on this cluster first")
        blob = token.bundle
        m.bundle_private_key = None  # one activation per generated key pair
    else:
        priv, pub = generate_bundle_keypair()
        blob = await _fetch_bundle(token, primary_api_addr or token.primary_api_addr, ca_file, pub,
                                   core.settings.api_addr)
    try:
        b: dict[str, Any] = msgpack.unpackb(open_bundle(priv, blob, _context(token.secondary_id)), raw=False)
        root_key = bytes(b["root_key"])
        rec = ReplicationRecord(
            kind=kind, mode="secondary", cluster_id=str(b["cluster_id"]), epoch=int(b["epoch"]),
            ca_cert_pem=bytes(b["ca"]).decode(), secondary_id=token.secondary_id, cert_pem=bytes(b["cert"]).decode(),
            key_pem=bytes(b["key"]).decode(), primary_api_addr=primary_api_addr or token.primary_api_addr,
            primary_cluster_addrs=tuple(token.primary_cluster_addrs), primary_ca_file=ca_file,
            # update-primary keeps the DR operation token (it is revoked by delete or promote)
            operation_token_sha256=current.operation_token_sha256 if current is not None else "",
        )
    except (BundleError, KeyError, TypeError, ValueError) as e:
        raise InvalidRequest(f"invalid activation bundle: {type(e).__name__}") from None
    return rec, root_key


def _decode_token(token_str: str, kind: str) -> ActivationToken:
    try:
        token = ActivationToken.decode(token_str, now=time.time())
    except TokenError as e:
        raise InvalidRequest(f"invalid activation token: {e}") from None
    if token.mode != kind:
        raise InvalidRequest(f"the token is not a {kind} secondary activation token")
    return token


async def _own_data_backup(core: "Core") -> int:
    """Copy this cluster's own replicated data aside (``backup.py``): one consistent read."""
    raft = core.cluster.raft
    assert raft is not None
    async with RaftWalSource(raft).snapshot("dr") as snap:
        return await backup.write(core.barrier.physical, snap.chunks(RaftWalSource.SNAPSHOT_CHUNK))


async def activate_secondary(core: "Core", token_str: str, primary_api_addr: str = "", ca_file: str = "",
                             *, kind: str = "dr", updating: bool = False) -> list[str]:
    """Become a secondary of ``kind`` of the primary that issued ``token_str``: fetch the
    activation bundle, then let the client bulk-sync; this cluster's data is replaced by the
    primary's (a performance secondary's local state too, on this first sync). Its own data
    is kept aside until the switch (``backup.py``), so ``disable`` can abandon the activation."""
    m = await _active_manager(core)
    _kind(kind)
    if m.activating:
        raise InvalidRequest(STAGED_NEEDS_TOKEN)
    if m.primary_record() is not None:
        raise InvalidRequest("this cluster is a replication primary; demote or disable it first")
    current = m.records.get(kind)
    if m.secondary_record() is not None and not updating:
        raise InvalidRequest("this cluster is already a replication secondary; use update-primary")
    token = _decode_token(token_str, kind)
    await check_secondary_seal(core.seals)  # before the token is used and anything is wiped
    async with m.activation_lock:  # no leftovers check while the backup is being written
        if m.activating:
            raise InvalidRequest(STAGED_NEEDS_TOKEN)
        kept = await _own_data_backup(core)  # before the token is used: a failure spends nothing
        try:
            rec, root_key = await _open_activation(core, m, token, primary_api_addr, ca_file, kind,
                                                   current if updating else None)
            # durable and replicated in this cluster's own log, under its own root key (or HSM):
            # whichever node is active after the bulk sync finishes the activation (staging.py)
            await stage(core.seals, core.barrier, rec, root_key)
        except BaseException:
            with contextlib.suppress(Exception):
                # nothing staged: the backup is of no use (a staged record, e.g. committed
                # before a timeout, is resumed from storage and needs its backup)
                if await core.barrier.raw_get(STAGED_KEY) is None:
                    await backup.clear(core.barrier.physical)
            raise
        await m._stop_client()
        m.pending = PendingActivation(rec, root_key, asyncio.Event())
        m.staged_kind, m.staged_since, m.activation_error = kind, int(time.time()), ""
        m.set_record(kind, m.records.get(kind))  # refresh the read-only flag for the pending role
        await core.enter_dr_secondary()
    m.poke()
    log.info("replication_secondary_enabling", kind=kind, secondary_id=token.secondary_id, kept_keys=kept)
    return [ENABLE_WARNING.format(role="secondary")]


async def replace_staged_activation(core: "Core", token_str: str, primary_api_addr: str = "", ca_file: str = "",
                                    kind: str = "dr") -> list[str]:
    """A new activation (a token from a working primary) in place of the staged one that
    cannot finish. Consistent with the staging design: until the switch the staged activation
    changed nothing this cluster cannot give back (its keys are its own, its data is in the
    backup, which stays the data from before the first activation), and the new activation's
    first bulk sync replaces whatever the earlier one copied."""
    m = await _active_manager(core)
    _kind(kind)
    staged = m.staged_activation_kind()
    if staged is None:
        raise InvalidRequest("no replication activation is staged on this cluster")
    if staged != kind:
        raise InvalidRequest(other_kind_staged(staged))
    if backup.marker_kind(await core.barrier.raw_get(backup.ABANDON_KEY)) is not None:
        raise InvalidRequest("the staged activation is being abandoned (disable); activate again once "
                             f"sys/replication/{kind}/status shows mode disabled")
    token = _decode_token(token_str, kind)
    await check_secondary_seal(core.seals)  # before the token is used
    rec, root_key = await _open_activation(core, m, token, primary_api_addr, ca_file, kind, m.records.get(kind))
    async with m.activation_lock:  # never in the middle of the switch
        if m.staged_activation_kind() != kind:
            raise InvalidRequest("the staged activation finished or was abandoned while this one was prepared; "
                                 "the new token is spent: revoke its id on its primary and issue another")
        await m._stop_client()
        await stage(core.seals, core.barrier, rec, root_key)  # replaces the staged record in one batch
        old, m.pending = m.pending, PendingActivation(rec, root_key, asyncio.Event())
        if old is not None:
            old.done.set()
        m.staged_kind, m.staged_since, m.activation_error = kind, int(time.time()), ""
        m._staged_unreadable = False
        m.set_record(kind, m.records.get(kind))
        await core.enter_dr_secondary()
    m.poke()
    log.info("replication_secondary_activation_replaced", kind=kind, secondary_id=token.secondary_id,
             replaced=old.record.secondary_id if old is not None else "")
    return [ENABLE_WARNING.format(role="secondary"),
            "The activation staged earlier on this cluster was replaced by this one."]


async def generate_public_key(core: "Core") -> str:
    """A fresh key pair for a public-key activation; returns the public half."""
    m = await _active_manager(core)
    priv, pub = generate_bundle_keypair()
    m.bundle_private_key = priv
    return pub


async def check_operation_token(core: "Core", token: str) -> None:
    """PermissionDenied unless ``token`` is this DR secondary's current operation token."""
    if not token or not core.replication.operation_token_valid(token):
        raise PermissionDenied()


def _secondary(m: ReplicationManager, kind: str) -> ReplicationRecord:
    staged = m.staged_activation_kind()
    if staged is not None:
        name = "DR" if staged == "dr" else "performance"
        raise InvalidRequest(f"the {name} secondary activation of this cluster has not finished (see "
                             f"sys/replication/{staged}/status): wait for it, replace it with a new token "
                             f"(sys/replication/{staged}/secondary/update-primary) or abandon it "
                             f"(sys/replication/{staged}/secondary/disable)")
    rec = m.records.get(kind)
    if rec is None or rec.mode != "secondary":
        raise InvalidRequest(f"this cluster is not a {'DR' if kind == 'dr' else 'performance'} secondary")
    return rec


#: The refusal when an activation is staged and no operation token came with the request.
STAGED_NEEDS_TOKEN = (
    "a replication activation is staged on this cluster and has not finished: enable, update-primary and "
    "disable need a dr_operation_token now, generated with this cluster's own unseal keys (recovery keys "
    "with an HSM seal) through sys/replication/dr/secondary/generate-operation-token, since its tokens "
    "cannot be used until the activation finishes")


async def _check_staged_token(m: ReplicationManager, op_token: str | None) -> None:
    """Authorize disabling or replacing a staged activation (400 without a token, 403 with a wrong one)."""
    if not op_token:
        raise InvalidRequest(STAGED_NEEDS_TOKEN)
    if not await m.staged_operation_token_valid(op_token):
        raise PermissionDenied()


async def staged_request(core: "Core", req: Request) -> Response:
    """``sys/replication/<kind>/secondary/{enable,update-primary,disable,generate-public-key}``
    through the pipeline while an activation is staged (core serves them first: the cluster's
    tokens are unusable): authorized by ``dr_operation_token`` like a DR secondary's operations."""
    _, _, kind, _, op = req.path.split("/", 4)
    if req.operation not in (Operation.UPDATE, Operation.CREATE):
        raise UnsupportedOperation()
    m = await _active_manager(core)
    if not m.activating:
        raise InvalidRequest("the staged activation finished or was abandoned meanwhile: retry the request")
    data = req.data or {}
    op_token = str(data.get("dr_operation_token") or "")
    if op == "disable":
        return Response(warnings=await disable_secondary(core, op_token, kind))
    if op == "generate-public-key":  # for a public-key token that replaces the staged activation
        await _check_staged_token(m, op_token)
        return Response(data={"secondary_public_key": await generate_public_key(core)})
    token = str(data.get("token") or "")
    if not token:
        raise InvalidRequest("missing required 'token' parameter")
    return Response(warnings=await update_primary(core, op_token, token, str(data.get("primary_api_addr") or ""),
                                                  str(data.get("ca_file") or ""), kind))


async def promote(core: "Core", op_token: str | None, primary_cluster_addr: str = "", kind: str = "dr",
                  *, force: bool = False) -> list[str]:
    """Promote this secondary to a primary of ``kind`` (new lineage, higher epoch). A DR
    secondary needs its operation token; a performance one an authorized caller. With
    fencing configured a DR promotion also needs the witness's grant (the old primary's
    lease has expired) unless ``force`` is set."""
    _require_raft(core)
    m = await _active_manager(core)
    cur = _secondary(m, kind)
    if kind == "dr":
        await check_operation_token(core, op_token or "")
    seen = m.client.status().primary_epoch if m.client is not None else 0
    epoch, lineage = max(cur.epoch, seen) + 1, str(uuid.uuid4())
    if kind == "dr" and m.fencing.enabled and not force:
        from vaultraft.replication.fence import LocalVoter, request_promotion

        voter = m.fencing.voter_for(cur)
        assert voter is not None
        epoch = max(epoch, voter.epoch + 1)
        result = await request_promotion(lineage, epoch, [LocalVoter(voter), m.fencing.witness()], participants=3)
        if not result.promoted:
            raise InvalidRequest("the primary's lease has not expired or the witness did not agree; retry after "
                                 "failover_timeout, or set force=true if the primary is certainly gone")
    await m._stop_client()
    ca = ClusterCA.create("vaultraft-replication-" + cur.cluster_id)
    rec = ReplicationRecord(kind=kind, mode="primary", cluster_id=cur.cluster_id, lineage=lineage,
                            epoch=epoch, primary_cluster_addr=primary_cluster_addr,
                            ca_cert_pem=ca.cert_pem.decode(), ca_key_pem=ca.key_pem.decode())
    await save_record(m._view(), rec)
    m.set_record(kind, rec)
    await core.leave_dr_secondary()
    m.poke()
    log.info("replication_secondary_promoted", kind=kind, epoch=rec.epoch)
    return [f"This cluster is being promoted to a {'DR' if kind == 'dr' else 'performance'} primary."]


async def promote_fenced(core: "Core", lineage: str, epoch: int) -> None:
    """Automatic promotion after the witness and this secondary's voter granted ``epoch``:
    commit the new primary record (lineage, epoch) to this cluster's log, then serve."""
    m = await _active_manager(core)
    cur = _secondary(m, "dr")
    await m._stop_client()
    ca = ClusterCA.create("vaultraft-replication-" + cur.cluster_id)
    rec = ReplicationRecord(kind="dr", mode="primary", cluster_id=cur.cluster_id, lineage=lineage, epoch=epoch,
                            ca_cert_pem=ca.cert_pem.decode(), ca_key_pem=ca.key_pem.decode())
    await save_record(m._view(), rec)
    m.set_record("dr", rec)
    await core.leave_dr_secondary()
    m.poke()


async def update_primary(core: "Core", op_token: str | None, token_str: str, primary_api_addr: str = "",
                         ca_file: str = "", kind: str = "dr") -> list[str]:
    """Point this secondary at a (new) primary with a fresh activation token."""
    m = await _active_manager(core)
    staged = m.staged_activation_kind()
    if staged is not None:  # an activation that cannot finish: the new one replaces it
        if staged != kind:
            raise InvalidRequest(other_kind_staged(staged))
        await _check_staged_token(m, op_token)
        return await replace_staged_activation(core, token_str, primary_api_addr, ca_file, kind)
    _secondary(m, kind)
    if kind == "dr":
        await check_operation_token(core, op_token or "")
    return await activate_secondary(core, token_str, primary_api_addr, ca_file, kind=kind, updating=True)


async def disable_secondary(core: "Core", op_token: str | None, kind: str = "dr") -> list[str]:
    """Stop being a secondary: the cluster keeps its data and serves as a standalone one. While
    an activation is staged (not switched yet) it is abandoned instead: the cluster gets back
    its own data and serves it with its own keys, as before the enable."""
    m = await _active_manager(core)
    staged = m.staged_activation_kind()
    if staged is not None:
        if staged != kind:
            raise InvalidRequest(other_kind_staged(staged))
        await _check_staged_token(m, op_token)
        await m.abandon_activation(kind)
        name = "DR" if kind == "dr" else "performance"
        return [f"The {name} secondary activation was abandoned: this cluster serves its own data again, "
                "with its own keys and tokens."]
    _secondary(m, kind)
    if kind == "dr":
        await check_operation_token(core, op_token or "")
    await m._stop_client()
    await delete_record(m._view(), kind)
    m.set_record(kind, None)
    m.forget_operation_token()
    await core.leave_dr_secondary()
    return [f"This cluster is no longer a {'DR' if kind == 'dr' else 'performance'} secondary."]


# ---- performance secondaries forward writes of replicated state ---------------------------


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


async def forward_to_primary(core: "Core", req: Request) -> Response | None:
    """Run ``req`` on the primary (it writes replicated state) as the caller this secondary
    authenticated, signed with this secondary's replication key; then wait until the change
    has arrived here, so the caller reads its own write from this cluster."""
    m = core.replication
    rec = m.perf
    if rec is None or rec.mode != "secondary" or not rec.secondary_id:
        raise Unavailable("this performance secondary has no primary to forward the write to")
    entry = await core.unsealed.tokens.lookup(req.client_token) if req.client_token else None
    if entry is None:
        raise PermissionDenied()
    payload = {
        "v": 1, "issued_at": time.time(), "nonce": os.urandom(16).hex(), "secondary_id": rec.secondary_id,
        "operation": req.operation.value, "path": req.path, "data": req.data,
        "headers": {k: v for k, v in req.headers.items() if k in ("x-vault-wrap-ttl",)},
        "policies": list(entry.policies), "display_name": entry.display_name, "entity_id": entry.entity_id,
        "meta": dict(entry.meta), "accessor": entry.accessor,
    }
    raw = _canonical(payload)
    key = serialization.load_pem_private_key(rec.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = key.sign(raw, ec.ECDSA(hashes.SHA256()))
    body = {"payload": base64.b64encode(raw).decode(), "signature": base64.b64encode(sig).decode(),
            "cert": rec.cert_pem}
    url = rec.primary_api_addr.rstrip("/") + "/v1/sys/replication/internal/forward"
    try:
        status, data = await _post_json(url, body, rec.primary_ca_file, FORWARD_TIMEOUT)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise Unavailable(f"cannot reach the primary to forward this write: {type(e).__name__}") from None
    if status >= 400 and isinstance(data, dict) and "errors" in data and "forwarded" not in data:
        return Response(raw_body=data, status=status)
    if not isinstance(data, dict) or "forwarded" not in data:
        raise Unavailable("the primary's answer to a forwarded write is malformed")
    fwd = data["forwarded"]
    index = int(fwd.get("wal_index") or 0)
    raft = core.cluster.raft
    if raft is not None and index:
        end = time.monotonic() + FORWARD_INDEX_WAIT
        while raft.store.replica_state().remote_index < index and time.monotonic() < end:
            await raft.wait_for_index(raft.store.applied_index(), 0.2)
    code = int(fwd.get("status") or 200)
    if code == 204:
        return None
    return Response(raw_body=fwd.get("body"), status=code)


_seen_nonces: dict[str, float] = {}


async def verify_forwarded(core: "Core", body: dict[str, Any]) -> tuple[Request, Any]:
    """The primary's side: verify a performance secondary's signed request (certificate from
    this primary's replication CA naming an active performance secondary, ECDSA signature,
    freshness, single use) and return it with the caller the secondary authenticated."""
    from vaultraft.core.tokens import TokenEntry
    from vaultraft.logical import Operation

    m = await _active_manager(core)
    rec = m.perf
    if rec is None or rec.mode != "primary":
        raise PermissionDenied()
    try:
        raw = base64.b64decode(str(body["payload"]), validate=True)
        sig = base64.b64decode(str(body["signature"]), validate=True)
        cert = x509.load_pem_x509_certificate(str(body["cert"]).encode())
        ca = x509.load_pem_x509_certificate(rec.ca_cert_pem.encode())
        ca_key = ca.public_key()
        hash_alg = cert.signature_hash_algorithm
        if not isinstance(ca_key, ec.EllipticCurvePublicKey) or hash_alg is None:
            raise ValueError("unexpected key type")
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise ValueError("unexpected key type")
        pub.verify(sig, raw, ec.ECDSA(hashes.SHA256()))
        payload: dict[str, Any] = json.loads(raw)
        operation = Operation(str(payload["operation"]))
    except (KeyError, ValueError, TypeError, InvalidSignature):
        raise PermissionDenied() from None
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    sid = str(payload.get("secondary_id", ""))
    entry_rec = rec.secondary(sid)
    if (not cn or cn[0].value != sid or entry_rec is None or entry_rec.revoked or not entry_rec.activated
            or entry_rec.mode != "performance"):
        raise PermissionDenied()
    now = time.time()
    nonce = str(payload.get("nonce", ""))
    if abs(now - float(payload.get("issued_at", 0))) > FORWARD_MAX_SKEW or not nonce or nonce in _seen_nonces:
        raise PermissionDenied()
    _seen_nonces[nonce] = now
    for n, t in list(_seen_nonces.items()):
        if now - t > 2 * FORWARD_MAX_SKEW:
            del _seen_nonces[n]
    caller = TokenEntry(id="", accessor=str(payload.get("accessor", "")),
                        policies=tuple(str(p) for p in payload.get("policies", [])),
                        display_name=str(payload.get("display_name", "")), entity_id=str(payload.get("entity_id", "")),
                        meta={str(k): str(v) for k, v in dict(payload.get("meta") or {}).items()})
    req = Request(operation=operation, path=str(payload["path"]), data=dict(payload.get("data") or {}),
                  client_token="", request_id=str(uuid.uuid4()), remote_addr=f"performance-secondary:{sid}",
                  headers=dict(payload.get("headers") or {}))
    log.info("replication_forwarded_request", secondary_id=sid)
    return req, caller


async def run_forwarded(core: "Core", req: Request, caller: Any) -> Response | None:
    """Run a verified forwarded request as ``caller`` (lease and sync rules apply)."""
    return await core.handle_forwarded(req, caller)


def forwarded_answer(core: "Core", status: int, body: Any) -> dict[str, Any]:
    """What the primary returns to the secondary: status, body and the WAL index to await."""
    return {"forwarded": {"status": status, "body": body, "wal_index": _wal_last(core)}}


def _wal_last(core: "Core") -> int:
    raft = core.cluster.raft
    return raft.store.wal_last() if raft is not None else 0


def envelope(resp: Response, req: Request) -> Any:
    """Vault's response envelope for a forwarded request's answer."""
    if resp.raw_body is not None:
        return resp.raw_body
    return {"request_id": req.request_id, "lease_id": resp.lease_id, "renewable": resp.renewable,
            "lease_duration": resp.lease_duration, "data": resp.data, "wrap_info": None,
            "warnings": resp.warnings or None, "auth": resp.auth.to_json() if resp.auth else None}
