"""Replication endpoints served before the pipeline (no client token), as in Vault:

* the status endpoints (unauthenticated in Vault);
* a DR secondary's operations, authorized by a DR operation token in the body instead of a
  client token (a DR secondary has no usable token store of its own);
* ``generate-operation-token`` (the shares are the authorization) and ``sys/decode-token``;
* the primary's internal activation call, authorized by the one-time secret in the token.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from vaultraft.core import Core
from vaultraft.core.key_ops import decode_share, decode_token
from vaultraft.core.replication import ops, secondary_ops
from vaultraft.http.errors import status_for
from vaultraft.http.sys_keys import _bool, _str
from vaultraft.logical import InvalidRequest, NotLeader, UnsupportedOperation, VaultError

Handler = Callable[[Core, str, dict[str, Any]], Awaitable[tuple[int, Any]]]


def _post(method: str) -> None:
    if method not in ("PUT", "POST"):
        raise UnsupportedOperation()


def _get(method: str) -> None:
    if method not in ("GET", "HEAD"):
        raise UnsupportedOperation()


def _status_of(core: Core, kind: str) -> dict[str, Any]:
    if core.sealed:
        return {"mode": "disabled"} if kind == "performance" else {"mode": "unknown"}
    return core.replication.status(kind)


async def status(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/replication/status``: both kinds."""
    _get(method)
    return 200, {"data": {"dr": _status_of(core, "dr"), "performance": _status_of(core, "performance")}}


async def dr_status(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/replication/dr/status``."""
    _get(method)
    return 200, {"data": _status_of(core, "dr")}


async def performance_status(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/replication/performance/status``."""
    _get(method)
    return 200, {"data": _status_of(core, "performance")}


def _warnings(warnings: list[str]) -> dict[str, Any]:
    return {"warnings": warnings, "data": None}


async def activate(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """The primary's side of a secondary's activation (one-time secret from the token)."""
    _post(method)
    return 200, {"data": await ops.activate(core, _str(body, "id"), _str(body, "secret"), _str(body, "public_key"),
                                            _str(body, "api_addr"))}


async def forward(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """A performance secondary's signed write, run here on the primary (see secondary_ops)."""
    _post(method)
    req, caller = await secondary_ops.verify_forwarded(core, body)
    try:
        resp = await secondary_ops.run_forwarded(core, req, caller)
    except VaultError as e:
        return 200, secondary_ops.forwarded_answer(core, status_for(e), {"errors": e.messages})
    if resp is None:
        return 200, secondary_ops.forwarded_answer(core, 204, None)
    return 200, secondary_ops.forwarded_answer(core, resp.status or 200, secondary_ops.envelope(resp, req))


async def promote(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/promote`` (dr_operation_token, primary_cluster_addr, force)."""
    _post(method)
    return 200, _warnings(await secondary_ops.promote(core, _str(body, "dr_operation_token"),
                                                      _str(body, "primary_cluster_addr"), force=_bool(body, "force")))


async def update_primary(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/update-primary`` (dr_operation_token, token, primary_api_addr, ca_file)."""
    _post(method)
    token = _str(body, "token")
    if not token:
        raise InvalidRequest("missing required 'token' parameter")
    return 200, _warnings(await secondary_ops.update_primary(core, _str(body, "dr_operation_token"), token,
                                                   _str(body, "primary_api_addr"), _str(body, "ca_file")))


async def disable_secondary(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/disable`` (dr_operation_token)."""
    _post(method)
    return 200, _warnings(await secondary_ops.disable_secondary(core, _str(body, "dr_operation_token")))


async def operation_token_delete(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/operation-token/delete`` (dr_operation_token)."""
    _post(method)
    await secondary_ops.check_operation_token(core, _str(body, "dr_operation_token"))
    await core.replication.delete_operation_token()
    return 204, None


async def merkle_check(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/merkle-check``: compare this secondary's digest with its primary's."""
    _post(method)
    await secondary_ops.check_operation_token(core, _str(body, "dr_operation_token"))
    return 200, {"data": await ops.merkle_check(core)}


async def reindex(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/reindex``: rebuild this DR secondary's copy with a full bulk sync."""
    _post(method)
    await secondary_ops.check_operation_token(core, _str(body, "dr_operation_token"))
    if not core.replication.dr_secondary or not core.active:
        raise InvalidRequest("reindex runs on the active node of a DR secondary")
    await core.replication.request_resync()
    return 200, _warnings(["Reindex started: this secondary resynchronizes from its primary."])


async def _operation_ops(core: Core) -> Any:
    if core.sealed:
        from vaultraft.logical import Sealed

        raise Sealed()
    # a cluster with a staged activation (either kind) mints one too, from its own shares:
    # it authorizes disabling or replacing that activation (secondary_ops.staged_request)
    if not core.replication.dr_secondary and not core.replication.activating:
        raise InvalidRequest("this cluster is not a DR secondary")
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    return core.replication.operation_ops()


async def operation_attempt(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/generate-operation-token/attempt``: GET status, PUT start, DELETE cancel."""
    key_ops = await _operation_ops(core)
    if method in ("GET", "HEAD"):
        return 200, await key_ops.generate_root_status()
    if method in ("PUT", "POST"):
        return 200, await key_ops.start_generate_root(_str(body, "otp"), _str(body, "pgp_key"))
    if method == "DELETE":
        await key_ops.cancel_generate_root()
        return 204, None
    raise UnsupportedOperation()


async def operation_update(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``dr/secondary/generate-operation-token/update``: one of the primary's key shares."""
    _post(method)
    key_ops = await _operation_ops(core)
    key = _str(body, "key")
    if not key:
        raise InvalidRequest("'key' must be specified in request body as JSON")
    return 200, await key_ops.update_generate_root(decode_share(key), _str(body, "nonce"))


async def decode(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``sys/decode-token``: XOR an OTP-encoded token back (no secret of the server involved)."""
    _post(method)
    encoded, otp = _str(body, "encoded_token"), _str(body, "otp")
    if not encoded or not otp:
        raise InvalidRequest("encoded_token and otp are required")
    try:
        token = decode_token(encoded, otp)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("encoded_token or otp is malformed") from None
    return 200, {"data": {"token": token}}


HANDLERS: dict[str, Handler] = {
    "sys/replication/status": status,
    "sys/replication/dr/status": dr_status,
    "sys/replication/performance/status": performance_status,
    "sys/replication/internal/activate": activate,
    "sys/replication/internal/forward": forward,
    "sys/replication/dr/secondary/promote": promote,
    "sys/replication/dr/secondary/update-primary": update_primary,
    "sys/replication/dr/secondary/disable": disable_secondary,
    "sys/replication/dr/secondary/operation-token/delete": operation_token_delete,
    "sys/replication/dr/secondary/merkle-check": merkle_check,
    "sys/replication/dr/secondary/reindex": reindex,
    "sys/replication/dr/secondary/generate-operation-token/attempt": operation_attempt,
    "sys/replication/dr/secondary/generate-operation-token/update": operation_update,
    "sys/decode-token": decode,
}
