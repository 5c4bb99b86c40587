"""Unauthenticated key-ceremony endpoints (Vault's http/sys_rekey.go and
sys_generate_root.go): ``sys/generate-root/attempt|update``, ``sys/rekey/init|update|verify``
and ``sys/rekey-recovery-key/init|update|verify``.

They need no token because the shares ARE the authorization. They need an unsealed
node, and only the active node holds an attempt: a standby raises NotLeader, which the
API handler turns into a forward (or redirect) to the active node, as Vault does.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from vaultraft.core import Core
from vaultraft.core.key_ops import RekeyRequest, active_key_ops, decode_share
from vaultraft.framework.fields import FieldType, convert
from vaultraft.logical import InvalidRequest, UnsupportedOperation

Handler = Callable[[Core, str, dict[str, Any]], Awaitable[tuple[int, Any]]]


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None or value == "":
        return 0
    try:
        return int(convert(FieldType.INT, value))
    except (TypeError, ValueError):
        raise InvalidRequest(f"'{name}' must be an integer") from None


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None or value == "":
        return False
    try:
        return bool(convert(FieldType.BOOL, value))
    except (TypeError, ValueError):
        raise InvalidRequest(f"'{name}' must be a boolean") from None


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string")
    return value


def _key(body: dict[str, Any]) -> bytes:
    key = _str(body, "key")
    if not key:
        raise InvalidRequest("'key' must be specified in request body as JSON")
    return decode_share(key)


def _pgp_keys(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("pgp_keys")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("'pgp_keys' must be a list of strings")
    return tuple(v.strip() for v in value)


async def generate_root_attempt(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """GET status; PUT/POST start (``otp`` or ``pgp_key``, or neither: a generated OTP
    returned once); DELETE cancel."""
    ops = await active_key_ops(core)
    if method in ("GET", "HEAD"):
        return 200, await ops.generate_root_status()
    if method in ("PUT", "POST"):
        return 200, await ops.start_generate_root(_str(body, "otp"), _str(body, "pgp_key"))
    if method == "DELETE":
        await ops.cancel_generate_root()
        return 204, None
    raise UnsupportedOperation()


async def generate_root_update(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """PUT/POST one unseal (or recovery) share with the attempt's nonce."""
    if method not in ("PUT", "POST"):
        raise UnsupportedOperation()
    ops = await active_key_ops(core)
    key = _key(body)
    return 200, await ops.update_generate_root(key, _str(body, "nonce"))


def _rekey_init(recovery: bool) -> Handler:
    async def handler(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        ops = await active_key_ops(core)
        if method in ("GET", "HEAD"):
            return 200, await ops.rekey_status(recovery)
        if method in ("PUT", "POST"):
            req = RekeyRequest(
                secret_shares=_int(body, "secret_shares"),
                secret_threshold=_int(body, "secret_threshold"),
                pgp_keys=_pgp_keys(body),
                backup=_bool(body, "backup"),
                require_verification=_bool(body, "require_verification"),
                stored_shares=_int(body, "stored_shares"),
            )
            return 200, await ops.start_rekey(recovery, req)
        if method == "DELETE":
            await ops.cancel_rekey(recovery, _str(body, "nonce"))
            return 204, None
        raise UnsupportedOperation()

    return handler


def _rekey_update(recovery: bool) -> Handler:
    async def handler(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        if method not in ("PUT", "POST"):
            raise UnsupportedOperation()
        ops = await active_key_ops(core)
        key = _key(body)
        return 200, await ops.update_rekey(recovery, key, _str(body, "nonce"))

    return handler


def _rekey_verify(recovery: bool) -> Handler:
    async def handler(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        ops = await active_key_ops(core)
        if method in ("GET", "HEAD"):
            return 200, await ops.verify_status(recovery)
        if method in ("PUT", "POST"):
            key = _key(body)
            return 200, await ops.update_verify(recovery, key, _str(body, "nonce"))
        if method == "DELETE":
            return 200, await ops.restart_verify(recovery)
        raise UnsupportedOperation()

    return handler


HANDLERS: dict[str, Handler] = {
    "sys/generate-root/attempt": generate_root_attempt,
    "sys/generate-root/update": generate_root_update,
    "sys/rekey/init": _rekey_init(False),
    "sys/rekey/update": _rekey_update(False),
    "sys/rekey/verify": _rekey_verify(False),
    "sys/rekey-recovery-key/init": _rekey_init(True),
    "sys/rekey-recovery-key/update": _rekey_update(True),
    "sys/rekey-recovery-key/verify": _rekey_verify(True),
}
