"""Standby → active: transparent request forwarding, or a 307 when the client asks.

Vault forwards over its cluster port; vaultraft forwards over the active node's API
address (``api_addr``), keeping the client's method, path, query, headers and body. The
``X-Vault-No-Request-Forwarding`` header asks for a redirect instead.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

FORWARDED_HEADER = "X-Vaultraft-Forwarded"
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", FORWARDED_HEADER.lower()}
_KEEP_RESPONSE = ("Content-Type", "X-Vault-Index", "Location", "Retry-After")


def no_leader_response() -> web.Response:
    """Vault's answer when no active node is known."""
    return web.json_response({"errors": ["local node not active but active cluster node not found"]}, status=503)


def redirect(leader_api_addr: str, request: web.BaseRequest) -> web.Response:
    """307 to the same path on the active node."""
    return web.Response(status=307, headers={"Location": leader_api_addr.rstrip("/") + request.path_qs})


class Forwarder:
    """Holds one client session for forwarding (opened lazily, closed with the app)."""

    def __init__(self, timeout: float = 65.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the session; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, leader_api_addr: str, request: web.BaseRequest) -> web.Response:
        """Replay ``request`` against the active node and relay its answer."""
        if request.headers.get(FORWARDED_HEADER):
            return no_leader_response()  # the "active" node we forwarded to is not active either
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[FORWARDED_HEADER] = "1"
        # read() returns the cached body when the handler already consumed it
        body = await request.read() if request.method in ("POST", "PUT", "PATCH", "DELETE") else None
        url = leader_api_addr.rstrip("/") + request.path_qs
        try:
            async with self._session.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False) as resp:
                payload = await resp.read()
                out = {k: resp.headers[k] for k in _KEEP_RESPONSE if k in resp.headers}
                return web.Response(status=resp.status, body=payload, headers=out)
        except (aiohttp.ClientError, TimeoutError):
            return no_leader_response()
