"""Streaming handlers for ``sys/storage/raft/snapshot`` and ``snapshot-force``.

The API handler speaks JSON; a snapshot is a binary file of any size. The API server
(:class:`vaultraft.http.app.ApiServer`) sends these two paths here instead. Authorization is still core's: each request runs
through :meth:`Core.handle_request` (token, ACL with ``sudo``, audit) like any other,
and the sys handler it reaches exchanges the file with this module through a
:class:`~vaultraft.core.raft_snapshot.Transfer` registered under the request id (the
upload is read only after the ACL allowed it; the download is streamed from a file).

A standby forwards both requests to the active node with streaming in both directions
(or answers 307 when ``X-Vault-No-Request-Forwarding`` is set).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any, AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from vaultraft.logging import log_request
from vaultraft.core import Core, raft_snapshot
from vaultraft.http.errors import status_for
from vaultraft.http.forward import FORWARDED_HEADER, no_leader_response, redirect
from vaultraft.logical import (
    InvalidRequest,
    NotLeader,
    Operation,
    Request,
    Sealed,
    UnsupportedOperation,
    VaultError,
)

log = structlog.get_logger("vaultraft.http")

PATHS = {"sys/storage/raft/snapshot": False, "sys/storage/raft/snapshot-force": True}
CHUNK = 1 << 20
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", FORWARDED_HEADER.lower()}
_SKIP_HEADERS = {"x-vault-token", "authorization", "cookie"}
_KEEP_RESPONSE = ("Content-Type", "Content-Length", "Content-Disposition", "Location", "Retry-After")


def watch_restores(core: Core) -> None:
    """Let core watch the log for completed restores on this node (the event loop must run)."""
    raft_snapshot.attach(core)


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _token(request: web.BaseRequest) -> str:
    tok = request.headers.get("X-Vault-Token", "")
    if tok:
        return tok.strip()
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


class SnapshotHandler:
    """Save (GET) and restore (POST/PUT) with bodies streamed, never held in memory whole."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        path = request.path[len("/v1/"):]
        status = 500
        try:
            resp = await self._dispatch(request, path, request_id)
        except NotLeader as e:
            resp = await self._to_active(request, e.leader_addr)
        except VaultError as e:
            resp = _json(status_for(e), {"errors": e.messages})
        except Exception as e:  # a server fault: the type only, never request data
            log.error("request_failed", request_id=request_id, error=type(e).__name__, path=path, exc_info=True)
            resp = _json(500, {"errors": ["internal error"]})
        status = resp.status
        log_request(request_id, request.method, path, status, round((time.monotonic() - started) * 1000, 2),
                    request.remote)
        return resp

    async def _dispatch(self, request: web.BaseRequest, path: str, request_id: str) -> web.StreamResponse:
        core = self.core
        force = PATHS[path]
        if request.method == "GET" and not force:
            op = Operation.READ
        elif request.method in ("POST", "PUT"):
            op = Operation.UPDATE
        else:
            raise UnsupportedOperation()
        if core.sealed:
            raise Sealed()
        if not core.active:  # before touching the body: a standby relays it as it arrives
            info = await core.leader_info()
            raise NotLeader(info.api_addr if info else None)
        transfer = raft_snapshot.Transfer()
        if op is Operation.UPDATE:
            transfer.upload = lambda dest: _receive(request, dest)
        req = Request(operation=op, path=path, data={}, client_token=_token(request), request_id=request_id,
                      remote_addr=request.remote or "",
                      headers={k.lower(): v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS})
        with raft_snapshot.registered(request_id, transfer):
            try:
                await core.handle_request(req)
            except BaseException:
                if transfer.path is not None:
                    _unlink(transfer.path)
                raise
        if op is Operation.UPDATE:
            if transfer.after is not None:
                await transfer.after()
            return web.Response(status=204)
        if transfer.path is None:
            raise InvalidRequest("no snapshot was produced")
        return await _send_file(request, transfer.path, transfer.size)

    async def _to_active(self, request: web.BaseRequest, leader_addr: str | None) -> web.StreamResponse:
        """Relay the request to the active node, streaming bodies both ways."""
        if not leader_addr or request.headers.get(FORWARDED_HEADER):
            return no_leader_response()
        if request.headers.get("X-Vault-No-Request-Forwarding"):
            return redirect(leader_addr, request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[FORWARDED_HEADER] = "1"
        body = _relay_body(request) if request.method in ("POST", "PUT") else None
        url = leader_addr.rstrip("/") + request.path_qs
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
        out: web.StreamResponse | None = None
        try:
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                async with session.request(request.method, url, headers=headers, data=body,
                                           allow_redirects=False) as up:
                    out = web.StreamResponse(status=up.status,
                                             headers={k: up.headers[k] for k in _KEEP_RESPONSE if k in up.headers})
                    await out.prepare(request)
                    async for chunk in up.content.iter_chunked(CHUNK):
                        await out.write(chunk)
                    await out.write_eof()
                    return out
        except (aiohttp.ClientError, TimeoutError):
            if out is None:
                return no_leader_response()
            raise


async def _relay_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _receive(request: web.BaseRequest, dest: str) -> int:
    """Write the request body to ``dest`` (0600); its size. InvalidRequest when too large."""
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > raft_snapshot.MAX_UPLOAD_BYTES:
                raise InvalidRequest(f"snapshot larger than {raft_snapshot.MAX_UPLOAD_BYTES} bytes")
            await asyncio.to_thread(out.write, chunk)
    return size


async def _send_file(request: web.BaseRequest, path: str, size: int) -> web.StreamResponse:
    """Stream the snapshot file at ``path`` and delete it."""
    try:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
