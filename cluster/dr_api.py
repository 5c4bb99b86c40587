"""Vault's ``sys/replication/dr/*`` calls against one node, as an operator makes them.

Stateless helpers used by :mod:`cluster.replication` and :mod:`cluster.drill`. Every
function takes the node to talk to and the credentials it needs; none prints or logs a
token or a key. Failures raise :class:`DRError` with the status and the server's
``errors`` (which never contain secrets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from cluster.local import REQUEST_ERRORS, ClusterError
from cluster.node import Node

T = TypeVar("T")

#: sys/health codes: active, standby, perf standby, DR secondary, sealed, uninitialized.
HEALTH_ACTIVE, HEALTH_STANDBY, HEALTH_PERF_STANDBY, HEALTH_DR_SECONDARY = 200, 429, 473, 472
HEALTH_SEALED, HEALTH_UNINITIALIZED = 503, 501


class DRError(ClusterError):
    """A DR replication call failed (the message carries status and server errors only)."""


def _errors(body: Any) -> str:
    if isinstance(body, dict) and body.get("errors"):
        return "; ".join(str(e) for e in body["errors"])
    return ""


def call(node: Node, method: str, path: str, body: Any = None, token: str | None = None, *,
         ok: tuple[int, ...] = (200, 204), timeout: float = 30.0) -> Any:
    """One API call that must answer a status in ``ok``; the parsed body (DRError otherwise)."""
    try:
        code, resp = node.request(method, path, body, token=token, timeout=timeout)
    except REQUEST_ERRORS as e:
        raise DRError(f"{method} {path} on {node.addr}: no answer ({type(e).__name__})") from None
    if code not in ok:
        raise DRError(f"{method} {path} on {node.addr}: {code} {_errors(resp)}".rstrip())
    return resp


def health(node: Node, timeout: float = 1.0) -> int | None:
    """sys/health status code, None when the node does not answer."""
    try:
        return node.request("GET", "sys/health", timeout=timeout)[0]
    except REQUEST_ERRORS:
        return None


def is_self_active(node: Node) -> bool:
    """Whether ``node`` says it is its cluster's active node (sys/leader ``is_self``; works on a
    DR secondary, whose every unsealed node answers 472 to sys/health)."""
    try:
        code, body = node.request("GET", "sys/leader", timeout=2.0)
    except REQUEST_ERRORS:
        return False
    return code == 200 and isinstance(body, dict) and bool(body.get("is_self"))


def dr_status(node: Node, timeout: float = 5.0) -> dict[str, Any]:
    """``sys/replication/dr/status`` data of ``node`` (mode "unknown" while it is sealed)."""
    body = call(node, "GET", "sys/replication/dr/status", timeout=timeout)
    return dict(body["data"]) if isinstance(body, dict) and isinstance(body.get("data"), dict) else {}


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; that value (TimeoutError naming
    ``what`` and the last value otherwise). Exceptions from ``check`` propagate."""
    end = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ---- primary side -------------------------------------------------------------------------------


def enable_primary(node: Node, token: str, primary_cluster_addr: str = "") -> None:
    """Make ``node``'s cluster a DR primary (no-op when it already is one); secondaries dial
    ``primary_cluster_addr`` when given (e.g. a proxy in front of the replication ports)."""
    if dr_status(node).get("mode") == "primary":
        return
    body = {"primary_cluster_addr": primary_cluster_addr} if primary_cluster_addr else {}
    call(node, "PUT", "sys/replication/dr/primary/enable", body, token)


def disable_primary(node: Node, token: str) -> None:
    """Stop being a DR primary (its secondaries lose their stream; the epoch is kept)."""
    call(node, "PUT", "sys/replication/dr/primary/disable", {}, token)


def secondary_token(node: Node, token: str, secondary_id: str, ttl: str = "30m") -> str:
    """A one-time activation token for ``secondary_id`` (Vault's ``wrap_info.token``)."""
    body = call(node, "PUT", "sys/replication/dr/primary/secondary-token", {"id": secondary_id, "ttl": ttl}, token)
    return str(body["wrap_info"]["token"])


def demote(node: Node, token: str) -> None:
    """Demote ``node``'s DR primary cluster to a DR secondary without a primary."""
    call(node, "PUT", "sys/replication/dr/primary/demote", {}, token)


# ---- secondary side -----------------------------------------------------------------------------


def activate_secondary(node: Node, token: str, activation_token: str) -> None:
    """``dr/secondary/enable``: ``node``'s cluster becomes a DR secondary (its data is replaced
    by the primary's). ``token`` is the secondary cluster's own root token."""
    call(node, "PUT", "sys/replication/dr/secondary/enable", {"token": activation_token}, token, timeout=60)


def operation_token(node: Node, keys: list[str]) -> str:
    """Vault's DR operation token ceremony on the DR secondary ``node`` with the PRIMARY's
    unseal ``keys`` (attempt, one update per required share, decode with the OTP).

    A pending attempt is cancelled first. The token is returned, never printed.
    """
    path = "sys/replication/dr/secondary/generate-operation-token/attempt"
    st = call(node, "GET", path)
    if st.get("started"):
        call(node, "DELETE", path)
    start = call(node, "PUT", path, {})
    if not start.get("started"):
        raise DRError(f"generate-operation-token did not start on {node.addr}")
    otp, nonce, required = start["otp"], start["nonce"], int(start["required"])
    if len(keys) < required:
        raise DRError(f"the operation token needs {required} unseal keys, the keys file has {len(keys)}")
    done: dict[str, Any] = {}
    for key in keys[:required]:
        done = call(node, "PUT", "sys/replication/dr/secondary/generate-operation-token/update",
                    {"key": key, "nonce": nonce})
    if not done.get("complete"):
        raise DRError(f"generate-operation-token on {node.addr} did not complete")
    decoded = call(node, "PUT", "sys/decode-token", {"encoded_token": done["encoded_token"], "otp": otp})
    return str(decoded["data"]["token"])


def promote(node: Node, op_token: str) -> None:
    """``dr/secondary/promote``: the DR secondary becomes a DR primary."""
    call(node, "PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op_token}, timeout=60)


def update_primary(node: Node, op_token: str, activation_token: str) -> None:
    """``dr/secondary/update-primary``: follow the primary that issued ``activation_token``."""
    call(node, "PUT", "sys/replication/dr/secondary/update-primary",
         {"dr_operation_token": op_token, "token": activation_token}, timeout=60)


def merkle_check(node: Node, op_token: str) -> dict[str, Any]:
    """``dr/secondary/merkle-check`` data (``equal``, indexes and roots of both sides)."""
    body = call(node, "PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op_token},
                timeout=60)
    return dict(body["data"])
