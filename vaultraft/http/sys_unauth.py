"""Endpoints served before authentication and while sealed: init, unseal, seal-status,
health and leader (Vault's http/sys_*.go handlers), plus the key-ceremony endpoints of
:mod:`vaultraft.http.sys_keys`.

``sys/init`` takes Vault's ``pgp_keys``, ``recovery_pgp_keys`` and ``root_token_pgp_key``:
every key is proven usable before anything is initialized, then each share (as hex text)
and the root token are encrypted to their holder's key; ``keys``/``keys_base64`` then
carry the OpenPGP messages, as in Vault."""

from __future__ import annotations

import base64
import time
from typing import Any

from aiohttp import web

from vaultraft import VAULT_COMPAT_VERSION
from vaultraft.core import Core
from vaultraft.core.key_ops import pgp_check, pgp_encrypt
from vaultraft.core.sys.misc import leader_status
from vaultraft.http import sys_keys
from vaultraft.framework.fields import convert, FieldType
from vaultraft.logical import InvalidRequest, UnsupportedOperation


def _int(body: dict[str, Any], name: str, default: int = 0) -> int:
    if name not in body or body[name] is None:
        return default
    try:
        return int(convert(FieldType.INT, body[name]))
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer") from None


def _bool(body: dict[str, Any], name: str) -> bool:
    if name not in body:
        return False
    try:
        return bool(convert(FieldType.BOOL, body[name]))
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a boolean") from None


async def init(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """GET: initialization status. PUT/POST: initialize (Vault's sys/init).

    Shamir takes secret_shares/secret_threshold and returns ``keys``; an HSM seal takes
    recovery_shares/recovery_threshold, returns ``recovery_keys`` (``keys`` empty) and
    leaves the node unsealed.
    """
    if method in ("GET", "HEAD"):
        return 200, {"initialized": await core.initialized()}
    if method not in ("PUT", "POST"):
        raise UnsupportedOperation()
    if _int(body, "stored_shares", 0) > 1:
        raise InvalidRequest("invalid seal configuration: stored keys cannot be larger than 1")
    shares, threshold = _int(body, "secret_shares", 0), _int(body, "secret_threshold", 0)
    rec_shares, rec_threshold = _int(body, "recovery_shares", 0), _int(body, "recovery_threshold", 0)
    pgp_keys = _keys(body, "pgp_keys")
    rec_pgp_keys = _keys(body, "recovery_pgp_keys")
    root_pgp = body.get("root_token_pgp_key") or ""
    if not isinstance(root_pgp, str):
        raise InvalidRequest("'root_token_pgp_key' must be a string")
    if pgp_keys and len(pgp_keys) != shares:
        raise InvalidRequest("invalid seal configuration: count mismatch between number of provided PGP keys "
                             "and number of shares")
    if rec_pgp_keys and len(rec_pgp_keys) != rec_shares:
        raise InvalidRequest("invalid recovery configuration: count mismatch between number of provided PGP keys "
                             "and number of shares")
    # Prove every PGP key usable BEFORE initializing: afterwards the shares could only be lost.
    for what, keys in (("seal", pgp_keys), ("recovery", rec_pgp_keys), ("root token", [root_pgp] if root_pgp else [])):
        if keys:
            try:
                await pgp_check(keys)
            except InvalidRequest as e:
                prefix = "invalid recovery configuration" if what == "recovery" else "invalid seal configuration"
                raise InvalidRequest(f"{prefix}: {e}") from None
    result = await core.initialize(shares, threshold, recovery_shares=rec_shares, recovery_threshold=rec_threshold)
    keys_out = list(result.keys)
    rec_out = list(result.recovery_keys)
    root_token = result.root_token
    if pgp_keys and keys_out:
        _, keys_out = await pgp_encrypt([k.hex().encode() for k in keys_out], pgp_keys)
    if rec_pgp_keys and rec_out:
        _, rec_out = await pgp_encrypt([k.hex().encode() for k in rec_out], rec_pgp_keys)
    if root_pgp:
        _, (blob,) = await pgp_encrypt([root_token.encode()], [root_pgp])
        root_token = base64.b64encode(blob).decode()
    out: dict[str, Any] = {
        "keys": [k.hex() for k in keys_out],
        "keys_base64": [base64.b64encode(k).decode() for k in keys_out],
        "root_token": root_token,
    }
    if rec_out:
        out["recovery_keys"] = [k.hex() for k in rec_out]
        out["recovery_keys_base64"] = [base64.b64encode(k).decode() for k in rec_out]
    return 200, out


def _keys(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if not value:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"'{name}' must be a list of strings")
    return [v.strip() for v in value]


async def unseal(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Submit a key share (a recovery share with an HSM seal), or reset; answers the seal
    status. ``migrate: true`` is required on every share while a seal migration is pending."""
    if method not in ("PUT", "POST"):
        raise UnsupportedOperation()
    reset = _bool(body, "reset")
    migrate = _bool(body, "migrate")
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidRequest("'key' must be a string")
    if not reset and not key:
        raise InvalidRequest("'key' must be specified in request body as JSON, or 'reset' set to true")
    await core.unseal(key, reset=reset, migrate=migrate)
    return 200, await core.seal_status()


async def seal_status(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Vault's seal status."""
    if method not in ("GET", "HEAD"):
        raise UnsupportedOperation()
    return 200, await core.seal_status()


async def leader(core: Core, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    """HA leader information."""
    if method not in ("GET", "HEAD"):
        raise UnsupportedOperation()
    return 200, await leader_status(core)


def _code(query: "web.BaseRequest", name: str, default: int) -> int:
    raw = query.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        code = int(raw)
    except ValueError:
        raise InvalidRequest(f"bad code for {name}: {raw!r}") from None
    if code < 100 or code > 999:
        raise InvalidRequest(f"bad code for {name}: {raw!r}")
    return code


def _flag(request: "web.BaseRequest", name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    return raw == "" or raw.lower() in ("1", "t", "true", "yes")


async def health(core: Core, request: "web.BaseRequest") -> tuple[int, Any]:
    """Vault's sys/health: status code by state, every override parameter honoured."""
    initialized = await core.initialized()
    sealed = core.sealed
    role = core.ha_role() if not sealed else "sealed"
    standby = role in ("standby", "perf_standby")
    perf = role == "perf_standby"
    dr_secondary = role == "dr_secondary"
    if not initialized:
        code = _code(request, "uninitcode", 501)
    elif sealed:
        code = _code(request, "sealedcode", 503)
    elif dr_secondary:
        code = _code(request, "drsecondarycode", 472)
    elif perf:
        code = _code(request, "activecode", 200) if _flag(request, "perfstandbyok") else _code(request, "performancestandbycode", 473)
    elif standby:
        code = _code(request, "activecode", 200) if _flag(request, "standbyok") else _code(request, "standbycode", 429)
    else:
        code = _code(request, "activecode", 200)
    status = await core.seal_status()
    body = {
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby,
        "performance_standby": perf,
        # as sys/replication/status reports them, on every node: a cluster whose activation is
        # staged (not switched to its primary's keys yet) is a secondary of that kind already
        "replication_performance_mode": "disabled" if sealed else core.replication.replication_mode("performance"),
        "replication_dr_mode": "disabled" if sealed else core.replication.replication_mode("dr"),
        "server_time_utc": int(time.time()),
        "version": VAULT_COMPAT_VERSION,
        "enterprise": False,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
        "replication_primary_canary_age_ms": 0,
    }
    if core.cluster.enabled:
        body["removed_from_cluster"] = core.cluster.removed
    if "cluster_id" in status:
        body["cluster_name"] = status["cluster_name"]
        body["cluster_id"] = status["cluster_id"]
    return code, body


HANDLERS = {
    "sys/init": init,
    "sys/unseal": unseal,
    "sys/seal-status": seal_status,
    "sys/leader": leader,
    # The unauthenticated key-ceremony endpoints (rekey, generate-root) are served the
    # same way; merged here so the API handler's dispatch needs no change.
    **sys_keys.HANDLERS,
}
