"""Joining a Raft cluster through the active node's API (Vault's raft join challenge).

A new node proves it can unseal before it may talk to the cluster:

1. joiner → active ``sys/storage/raft/bootstrap/challenge {server_id}``: the active node
   answers with a random challenge encrypted by its barrier, the seal configuration, and
   the sealed root-key and keyring blobs (ciphertext, useless without unseal keys);
2. the operator unseals the joiner with the cluster's unseal keys; the joiner recovers
   the root key, opens the keyring in memory and decrypts the challenge;
3. joiner → active ``sys/storage/raft/bootstrap/answer {server_id, answer, cluster_addr,
   public_key}``: the active node checks the answer, signs the joiner's public key with
   the cluster CA, adds it to the Raft configuration and returns the peers;
4. the joiner wipes its local store, starts consensus with its new certificate, receives
   the log (or a snapshot) and unseals its barrier from the replicated keyring.

No cluster secret is ever in a config file; the only thing a joiner receives before
proving itself is ciphertext.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from vaultraft.aio import wait_event
from vaultraft.barrier import Barrier, decrypt_detached
from vaultraft.barrier.errors import BarrierError
from vaultraft.core.seal_manager import decode_key
from vaultraft.logical import InvalidRequest, PermissionDenied
from vaultraft.raft.tls import NodeCert, generate_key_pair
from vaultraft.seal.shamir_seal import (
    RootKeyUnwrapError,
    SealConfig,
    ShareError,
    UnsealProgress,
    unwrap_root_key,
)

log = structlog.get_logger("vaultraft.core")

CHALLENGE_PATH = "core/raft/challenge"
CHALLENGE_TTL = 600.0
JOIN_RETRY = 2.0


@dataclass
class _Issued:
    answer: bytes
    expires: float


@dataclass
class PendingJoin:
    """What a joiner holds between fetching the challenge and being unsealed."""

    leader_api_addr: str
    seal_config: SealConfig
    challenge: bytes
    root_key_blob: bytes
    keyring_blob: bytes
    non_voter: bool
    hsm_root_key_blob: bytes = b""


class ChallengeIssuer:
    """The active node's side: issue challenges and verify answers."""

    def __init__(self) -> None:
        self._issued: dict[str, _Issued] = {}

    def issue(self, server_id: str, barrier: Barrier) -> bytes:
        """A fresh challenge ciphertext for ``server_id`` (replaces an earlier one)."""
        now = time.monotonic()
        self._issued = {k: v for k, v in self._issued.items() if v.expires > now}
        answer = os.urandom(32)
        self._issued[server_id] = _Issued(answer, now + CHALLENGE_TTL)
        return barrier.encrypt(CHALLENGE_PATH, answer)

    def verify(self, server_id: str, answer: bytes) -> None:
        """PermissionDenied unless ``answer`` is the live challenge for ``server_id``."""
        issued = self._issued.pop(server_id, None)
        if issued is None or issued.expires < time.monotonic() or not hmac.compare_digest(issued.answer, answer):
            raise PermissionDenied("invalid answer to the raft join challenge")


class Joiner:
    """The joining node's side of the ceremony."""

    def __init__(self) -> None:
        self.pending: PendingJoin | None = None
        self._progress: UnsealProgress | None = None
        self._session_timeout = aiohttp.ClientTimeout(total=10)

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=self._session_timeout) as s:
            async with s.post(url, json=body) as r:
                data: dict[str, Any] = await r.json(content_type=None)
                if r.status >= 400:
                    raise InvalidRequest(f"leader {url} answered {r.status}: {'; '.join(data.get('errors') or [])}")
                return data

    async def fetch_challenge(self, leader_api_addr: str, server_id: str, non_voter: bool) -> None:
        """Step 1: ask the leader for a challenge; afterwards the node awaits unseal keys."""
        url = leader_api_addr.rstrip("/") + "/v1/sys/storage/raft/bootstrap/challenge"
        try:
            data = await self._post(url, {"server_id": server_id})
        except (aiohttp.ClientError, TimeoutError) as e:
            raise InvalidRequest(f"error during raft bootstrap init call: {type(e).__name__}") from None
        d = data.get("data") or data
        try:
            self.pending = PendingJoin(
                leader_api_addr=leader_api_addr,
                seal_config=SealConfig.from_dict(d["seal_config"]),
                challenge=base64.b64decode(d["challenge"]),
                root_key_blob=base64.b64decode(d["root_key_blob"]),
                keyring_blob=base64.b64decode(d["keyring_blob"]),
                non_voter=non_voter,
                hsm_root_key_blob=base64.b64decode(d.get("hsm_root_key_blob") or ""),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidRequest(f"malformed challenge from {leader_api_addr}: {type(e).__name__}") from None
        self._progress = None
        log.info("raft_join_challenge_received", leader=leader_api_addr)

    def status_fields(self) -> dict[str, Any]:
        """Seal-status fields while waiting for unseal keys."""
        assert self.pending is not None
        cfg = self.pending.seal_config
        progress = self._progress.progress if self._progress else 0
        return {"type": cfg.type, "initialized": True, "t": cfg.secret_threshold, "n": cfg.secret_shares,
                "progress": progress, "nonce": self._progress.nonce if (self._progress and progress) else "",
                "migration": False, "recovery_seal": False}

    def reset_progress(self) -> None:
        """Forget submitted shares."""
        if self._progress is not None:
            self._progress.reset()
        self._progress = None

    async def submit_share(self, key: str) -> bytes | None:
        """Step 2: add a share; the root key once the threshold is met."""
        assert self.pending is not None
        if self._progress is None:
            self._progress = UnsealProgress(self.pending.seal_config.secret_threshold)
        try:
            kek = self._progress.add(decode_key(key))
        except ShareError as e:
            self.reset_progress()
            raise InvalidRequest(str(e)) from None
        if kek is None:
            return None
        self._progress = None
        try:
            return unwrap_root_key(kek, self.pending.root_key_blob)
        except RootKeyUnwrapError:
            raise InvalidRequest("Error unsealing: failed to decrypt the root key: invalid key or key combination") from None

    async def answer(self, root_key: bytes, server_id: str, cluster_addr: str,
                     api_addr: str = "", replication_addr: str = "",
                     accept_non_voter: Callable[[str], bool] | None = None) -> tuple[type, list[str]]:
        """Step 3: decrypt the challenge, answer it, and get a certificate and the peers
        (the transport admits non-voters through ``accept_non_voter``)."""
        assert self.pending is not None
        p = self.pending
        try:
            plain = decrypt_detached(root_key, p.keyring_blob, CHALLENGE_PATH, p.challenge)
        except BarrierError as e:
            raise InvalidRequest(f"cannot open the join challenge: {e}") from None
        private_pem, public_pem = generate_key_pair()
        url = p.leader_api_addr.rstrip("/") + "/v1/sys/storage/raft/bootstrap/answer"
        data = await self._post(url, {
            "server_id": server_id, "answer": base64.b64encode(plain).decode(), "cluster_addr": cluster_addr,
            "public_key": public_pem.decode(), "non_voter": p.non_voter, "api_addr": api_addr,
            "replication_addr": replication_addr,
        })
        d = data.get("data") or data
        cert = NodeCert(cert_pem=d["tls_cert"].encode(), key_pem=private_pem, ca_pem=d["ca_cert"].encode())
        peers = [str(x) for x in d["peers"] if str(x) != cluster_addr]
        log.info("raft_join_answer_accepted", peers=len(peers))
        from vaultraft.core.cluster import cluster_transport

        return cluster_transport(cert, accept_non_voter), peers


async def retry_until(fn: Any, *, stop: asyncio.Event, interval: float = JOIN_RETRY) -> None:
    """Call ``await fn()`` until it returns True or ``stop`` is set (retry_join)."""
    while not stop.is_set():
        try:
            if await fn():
                return
        except Exception as e:  # each attempt's failure is logged, then retried
            log.warning("raft_retry_join_failed", error=str(e) if str(e) else type(e).__name__)
        await wait_event(stop, interval)
