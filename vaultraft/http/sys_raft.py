"""Raft endpoints that must work before a node is unsealed or initialized: join and the
bootstrap challenge/answer (unauthenticated, as in Vault: they carry only ciphertext and
a proof that the caller holds the unseal keys)."""

from __future__ import annotations

from typing import Any

from vaultraft.core import Core, raft_ops, raft_removal
from vaultraft.logical import InvalidRequest, UnsupportedOperation


def _post_only(method: str) -> None:
    if method not in ("PUT", "POST"):
        raise UnsupportedOperation()


async def join(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/storage/raft/join``: start joining; the node then waits for unseal keys."""
    _post_only(method)
    addr = body.get("leader_api_addr")
    if not isinstance(addr, str) or not addr:
        raise InvalidRequest("leader_api_addr is required")
    await raft_ops.join(core, addr, bool(body.get("non_voter", False)))
    return 200, {"joined": True}


async def challenge(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/storage/raft/bootstrap/challenge`` on the active node."""
    _post_only(method)
    return 200, await raft_ops.issue_challenge(core, str(body.get("server_id") or ""))


async def answer(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/storage/raft/bootstrap/answer`` on the active node."""
    _post_only(method)
    return 200, await raft_ops.accept_answer(core, body)


async def removed(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """The active node's notice that this node was removed (see core/raft_removal.py)."""
    _post_only(method)
    await raft_removal.accept_removal(core, body)
    return 200, {"removed": True}


HANDLERS = {
    raft_removal.NOTICE_PATH: removed,
    "sys/storage/raft/join": join,
    "sys/storage/raft/bootstrap/challenge": challenge,
    "sys/storage/raft/bootstrap/answer": answer,
}
