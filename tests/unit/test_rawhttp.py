"""The load generator's raw HTTP/1.1 client against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.load import LoadSpec, run_load
from benchmarks.rawhttp import ProtocolError, RawConnection, _parse_head, encode_request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes, str]]]]:
    seen: list[tuple[str, str, bytes, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.path, body, request.headers.get("X-Vault-Token", "")))
        if request.path.endswith("/close"):
            return web.json_response({"ok": True}, headers={"Connection": "close"})
        if request.path.endswith("/missing"):
            return web.json_response({"errors": []}, status=404)
        if request.path.endswith("/chunked"):
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"x")
            await resp.write_eof()
            return resp
        return web.json_response({"data": {"n": len(body)}}, headers={"X-Vault-Index": str(len(seen))})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_keep_alive_requests_reach_the_server_intact(server: tuple[str, list]) -> None:
    url, seen = server
    conn = RawConnection(url)
    req = encode_request("POST", conn.netloc, "/v1/secret/data/a", {"X-Vault-Token": "t"}, b'{"data": {}}')
    assert await conn.send(req) == 200
    assert await conn.send(encode_request("GET", conn.netloc, "/v1/x/missing", {}, None)) == 404
    assert await conn.send_for(req, b"x-vault-index") == (200, b"3")
    await conn.close()
    assert seen[0] == ("POST", "/v1/secret/data/a", b'{"data": {}}', "t")
    assert [s[0] for s in seen] == ["POST", "GET", "POST"]


async def test_reconnects_after_the_server_closes(server: tuple[str, list]) -> None:
    url, seen = server
    conn = RawConnection(url)
    assert await conn.send(encode_request("GET", conn.netloc, "/close", {}, None)) == 200
    assert await conn.send(encode_request("GET", conn.netloc, "/again", {}, None)) == 200
    await conn.close()
    assert [s[1] for s in seen] == ["/close", "/again"]


async def test_a_chunked_answer_is_a_protocol_error(server: tuple[str, list]) -> None:
    url, _ = server
    conn = RawConnection(url)
    with pytest.raises(ProtocolError):
        await conn.send(encode_request("GET", conn.netloc, "/chunked", {}, None))
    assert await conn.send(encode_request("GET", conn.netloc, "/fine", {}, None)) == 200
    await conn.close()


async def test_run_load_counts_acknowledged_writes_with_the_raw_client(server: tuple[str, list]) -> None:
    url, seen = server
    res = await run_load(LoadSpec(base_url=url, token="t", op="write", concurrency=4, duration_s=0.3))
    assert res.summary.ok == len(res.written_keys) == len(seen) > 0
    assert res.summary.errors == {}
    assert all(s[0] == "POST" and s[3] == "t" for s in seen)


async def test_a_refused_connection_is_a_conn_error_sample() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    res = await run_load(LoadSpec(base_url=url, token="t", op="write", concurrency=1, duration_s=0.1,
                                  error_backoff_s=0.02))
    assert res.summary.ok == 0
    assert set(res.summary.errors) == {"conn_error"}


def test_parse_head_reads_status_length_and_close() -> None:
    assert _parse_head(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, 0, False, None)
    assert _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n") == \
        (200, 12, True, None)
    assert _parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nX-Vault-Index: 42\r\n\r\n",
                       b"x-vault-index") == (200, 3, True, b"42")
    with pytest.raises(ProtocolError):
        _parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ProtocolError):
        _parse_head(b"HTTP/1.1 abc OK\r\n\r\n")


def test_paths_are_percent_encoded() -> None:
    req = encode_request("GET", "h", "/v1/secret/data/dev write-1", {}, None)
    assert req.startswith(b"GET /v1/secret/data/dev%20write-1 HTTP/1.1\r\n")


def test_only_plain_http_is_spoken() -> None:
    with pytest.raises(ValueError):
        RawConnection("https://127.0.0.1:8200")
    assert asyncio.iscoroutinefunction(RawConnection.send)
