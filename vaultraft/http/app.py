"""The API's HTTP server: aiohttp's low-level server, one dispatcher translating to core.

Every Vault path lives under ``/v1/`` and core routes it (mount table, then the engine's
declarative paths), so aiohttp's application router would only match one catch-all pattern
per request. The low-level :class:`aiohttp.web.Server` hands each request straight to
:class:`ApiServer`, which sends the two streaming snapshot paths to their handler and every
other ``/v1/`` path to :class:`ApiHandler`: about 5 % of the active node's CPU per KV write
that the router, its match objects and the middleware chain used to cost.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web, web_protocol

from vaultraft.logging import log_request
from vaultraft import jsoncodec
from vaultraft.core import Core
from vaultraft.http import raft_snapshot, sys_raft, sys_replication, sys_unauth
from vaultraft.http.errors import status_for
from vaultraft.http.forward import Forwarder, no_leader_response, redirect
from vaultraft.http.parser import AdaptiveRequestParser
from vaultraft.logical import (
    InvalidRequest,
    NotLeader,
    Operation,
    Request,
    Response,
    VaultError,
)
from vaultraft.randpool import uuid4_str

log = structlog.get_logger("vaultraft.http")

# Vault's API uses the non-standard LIST method, which aiohttp's C parser rejects: each
# connection starts on the C parser and switches to the pure-Python one at its first LIST.
web_protocol.HttpRequestParser = AdaptiveRequestParser  # type: ignore[attr-defined,assignment]

MAX_REQUEST_SIZE = 32 * 1024 * 1024
_WRITE_OPS = (Operation.CREATE, Operation.UPDATE, Operation.PATCH, Operation.DELETE)
_SKIP_HEADERS = {"x-vault-token", "authorization", "cookie"}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=jsoncodec.dumps(body), content_type="application/json", headers=headers)


def error_response(err: VaultError) -> web.Response:
    """Vault's ``{"errors": [...]}`` body with the mapped status."""
    return _json(status_for(err), {"errors": err.messages})


def operation_for(method: str, query: dict[str, str]) -> Operation:
    """Vault's method → logical operation mapping."""
    if method == "LIST":
        return Operation.LIST
    if method in ("GET", "HEAD"):
        if query.get("list", "").lower() in ("true", "1", "t"):
            return Operation.LIST
        if query.get("help", "").lower() in ("1", "true", "t"):
            return Operation.HELP
        return Operation.READ
    if method in ("POST", "PUT"):
        return Operation.UPDATE
    if method == "PATCH":
        return Operation.PATCH
    if method == "DELETE":
        return Operation.DELETE
    raise web.HTTPMethodNotAllowed(method, ["GET", "LIST", "POST", "PUT", "PATCH", "DELETE", "HEAD"])


async def read_body(request: web.BaseRequest) -> dict[str, Any]:
    """The JSON object in the body (empty body: {}); InvalidRequest otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = jsoncodec.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"failed to parse JSON input: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("failed to parse JSON input: the body must be a JSON object")
    return body


def client_token(request: web.BaseRequest) -> str:
    """X-Vault-Token, else an ``Authorization: Bearer`` token, else ""."""
    tok = request.headers.get("X-Vault-Token", "")
    if tok:
        return tok.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return ""


def envelope(resp: Response, request_id: str, mount_type: str) -> Any:
    """Vault's response envelope (or the raw body for bare sys endpoints)."""
    if resp.raw_body is not None:
        return resp.raw_body
    body: dict[str, Any] = {
        "request_id": request_id,
        "lease_id": resp.lease_id,
        "renewable": resp.renewable,
        "lease_duration": resp.lease_duration,
        "data": resp.data,
        "wrap_info": None,
        "warnings": resp.warnings or None,
        "auth": resp.auth.to_json() if resp.auth else None,
        "mount_type": mount_type,
    }
    if resp.mirror_data and resp.data:
        for k, v in resp.data.items():
            body.setdefault(k, v)
    return body


class ApiHandler:
    """Turns aiohttp requests into logical requests and back; logs one line each."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.forwarder = Forwarder()

    async def __call__(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Answer ``request`` for the API path ``path`` (what follows ``/v1/``)."""
        started = time.monotonic()
        request_id = uuid4_str()
        status = 500
        try:
            resp = await self._dispatch(request, path, request_id)
            status = resp.status
            return resp
        except NotLeader as e:
            resp = await self._to_active(request, e.leader_addr)
            status = resp.status
            return resp
        except VaultError as e:
            status = status_for(e)
            return error_response(e)
        except web.HTTPException as e:
            status = e.status
            return _json(e.status, {"errors": [e.reason]})
        except Exception as e:  # a server fault: log the type only, never request data
            log.error("request_failed", request_id=request_id, error=type(e).__name__, path=path,
                      exc_info=isinstance(e, (AssertionError, AttributeError, KeyError, TypeError, NameError)))
            return _json(500, {"errors": ["internal error"]})
        finally:
            log_request(request_id, request.method, path, status, round((time.monotonic() - started) * 1000, 2),
                        request.remote)

    async def _to_active(self, request: web.BaseRequest, leader_addr: str | None) -> web.Response:
        """A standby's answer: forward to the active node, or redirect when asked to."""
        if not leader_addr:
            return no_leader_response()
        if request.headers.get("X-Vault-No-Request-Forwarding"):
            return redirect(leader_addr, request)
        return await self.forwarder.forward(leader_addr, request)

    async def _dispatch(self, request: web.BaseRequest, path: str, request_id: str) -> web.Response:
        core = self.core
        method = request.method
        path = path.strip("/") if path != "" else ""
        body: dict[str, Any] = {}
        if method in ("POST", "PUT", "PATCH") or (method == "DELETE" and request.can_read_body):
            body = await read_body(request)
        if path == "sys/health":
            code, health = await sys_unauth.health(core, request)
            if method == "HEAD":
                return web.Response(status=code)
            return _json(code, health)
        special = (sys_unauth.HANDLERS.get(path) or sys_raft.HANDLERS.get(path)
                   or sys_replication.HANDLERS.get(path))
        if special is not None:
            code, out = await special(core, method, body)
            return _json(code, out)
        query = {k: v for k, v in request.query.items()} if request.query_string else {}
        op = operation_for(method, query)
        if op is Operation.PATCH and request.content_type != "application/merge-patch+json":
            return _json(415, {"errors": ["PATCH requires Content-Type application/merge-patch+json"]})
        data = body
        if op in (Operation.READ, Operation.LIST, Operation.HELP, Operation.DELETE):
            merged = {k: v for k, v in query.items() if k not in ("list", "help")}
            merged.update(body)
            data = merged
        if op is Operation.LIST and not path.endswith("/"):
            path += "/"
        req = Request(
            operation=op,
            path=path,
            data=data,
            client_token=client_token(request),
            request_id=request_id,
            remote_addr=request.remote or "",
            headers={lk: v for k, v in request.headers.items() if (lk := k.lower()) not in _SKIP_HEADERS},
        )
        resp = await core.handle_request(req)
        headers: dict[str, str] = {}
        if op in _WRITE_OPS:
            headers["X-Vault-Index"] = str(core.physical.applied_index())
        if resp is None or (resp.data is None and resp.auth is None and not resp.warnings
                            and resp.raw_body is None and resp.status is None):
            return web.Response(status=204, headers=headers)
        headers.update(resp.headers)
        mount_type = ""
        route = core.router.match(path)
        if route is not None:
            mount_type = route.entry.type
        return _json(resp.status or 200, envelope(resp, request_id, mount_type), headers)


class ApiServer:
    """The request handler of aiohttp's low-level server for Vault's API on ``core``.

    ``/v1/sys/storage/raft/snapshot[-force]`` go to the streaming snapshot handler, every
    other ``/v1/`` path to :class:`ApiHandler`; anything else is Vault's 404. Call
    :meth:`start` once the event loop runs and :meth:`close` after the server stopped.
    """

    def __init__(self, core: Core, *, max_request_size: int = MAX_REQUEST_SIZE) -> None:
        self.core = core
        self.max_request_size = max_request_size
        self.api = ApiHandler(core)
        self.snapshots = raft_snapshot.SnapshotHandler(core)
        self._loop: asyncio.AbstractEventLoop | None = None

    def server(self) -> web.Server:
        """A low-level aiohttp server whose requests this object answers (no access log);
        call it on the event loop that will serve them."""
        self._loop = asyncio.get_running_loop()
        return web.Server(self, request_factory=self._make_request, access_log=None)

    def start(self) -> None:
        """Begin what the API needs in the background (core watching for snapshot restores)."""
        raft_snapshot.watch_restores(self.core)

    async def close(self) -> None:
        """Release the forwarder's connections to the active node."""
        await self.api.forwarder.close()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route ``request`` by path; answer ``Expect: 100-continue`` before a body is read."""
        path = request.path
        if not path.startswith("/v1/"):
            return _json(404, {"errors": []})
        expect = request.headers.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                return _json(417, {"errors": [f"unsupported expectation: {expect}"]})
            if request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        path = path[4:]
        if path in raft_snapshot.PATHS:
            return await self.snapshots(request)
        return await self.api(request, path)

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        assert self._loop is not None
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop,
                               client_max_size=self.max_request_size)
