"""KV v2 writers for the replication benchmarks (asyncio; the raw HTTP client for http, aiohttp
for https; loopback only).

:func:`paced_writes` is an *open-loop* writer: write ``i`` is due at ``start + i / rate``
whatever happened to earlier writes, and ``connections`` workers (keep-alive connections)
take the next due write as soon as they are free, so the target rate is reachable as long
as ``connections`` ≥ rate × latency. When the server cannot keep up the writes go out late
(back to back) and the achieved rate says so. ``rate=None`` sends back to back (closed
loop): the maximum the primary sustains with that many connections. Every acknowledged
write is recorded with its send and ack times (``time.monotonic()``) and the response's
``X-Vault-Index`` (the primary's applied index when it answered, ≥ the write's own index).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from benchmarks.load import (
    STATUS_CONN_ERROR,
    STATUS_TIMEOUT,
    check_loopback,
    percentile,
    status_label,
)
from benchmarks.rawhttp import ProtocolError, RawConnection, encode_request


@dataclass(frozen=True)
class WriteAck:
    """One acknowledged write."""

    sent: float
    acked: float
    index: int


@dataclass
class WriteRun:
    """The outcome of one writer run."""

    target_rate: float | None
    connections: int
    started: float
    elapsed_s: float
    acks: list[WriteAck] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0

    @property
    def achieved_rate(self) -> float:
        """Acknowledged writes per second of wall time."""
        return len(self.acks) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        """The ``q``-th percentile of write latency (send → ack), ms."""
        lat = sorted((a.acked - a.sent) * 1000.0 for a in self.acks)
        return percentile(lat, q) if lat else None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)
        return {"target_rate": self.target_rate, "connections": self.connections, "issued": self.issued,
                "acked": len(self.acks), "elapsed_s": round(self.elapsed_s, 3),
                "achieved_rate": round(self.achieved_rate, 1), "write_p50_ms": r(self.latency_ms(50)),
                "write_p99_ms": r(self.latency_ms(99)), "errors": dict(sorted(self.errors.items()))}


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, int]:
    """One write through aiohttp: (status or pseudo-status, X-Vault-Index)."""
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status, int(resp.headers.get("X-Vault-Index") or 0)
    except TimeoutError:
        return STATUS_TIMEOUT, 0
    except (aiohttp.ClientError, OSError, ValueError):
        return STATUS_CONN_ERROR, 0


async def paced_writes(base_url: str, token: str, *, rate: float | None, duration_s: float, connections: int,
                       prefix: str, mount: str = "bench", count: int | None = None, payload_bytes: int = 64,
                       request_timeout_s: float = 10.0) -> WriteRun:
    """Write KV v2 secrets ``<mount>/data/<prefix><i>``; see the module docstring.

    Stops issuing at ``duration_s`` after the start or after ``count`` writes (``rate *
    duration_s`` when paced and ``count`` is None), whichever comes first; requests in flight
    then complete. A failed write is counted under its status and not retried.
    """
    check_loopback(base_url)
    if connections < 1 or duration_s <= 0 or (rate is not None and rate <= 0):
        raise ValueError("connections, duration and rate must be positive")
    total = count if count is not None else (int(rate * duration_s) if rate is not None else None)
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    body = json.dumps({"data": {"value": "v" * payload_bytes}}).encode()
    path = f"/v1/{mount}/data/{prefix}"
    url = base_url.rstrip("/") + path
    acks: list[WriteAck] = []
    errors: Counter[str] = Counter()
    next_i = 0
    start = time.monotonic() + 0.05  # every worker is ready by then
    deadline = start + duration_s

    async def worker(session: aiohttp.ClientSession | None) -> None:
        conn = RawConnection(base_url) if session is None else None

        async def send(i: int) -> tuple[int, int]:
            if conn is None:
                assert session is not None
                return await _post(session, f"{url}{i}", body, headers)
            req = encode_request("POST", conn.netloc, f"{path}{i}", headers, body)
            try:
                async with asyncio.timeout(request_timeout_s):
                    status, raw = await conn.send_for(req, b"x-vault-index")
                return status, int(raw or 0)
            except TimeoutError:
                return STATUS_TIMEOUT, 0
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError):
                return STATUS_CONN_ERROR, 0

        try:
            await _work(send)
        finally:
            if conn is not None:
                await conn.close()

    async def _work(send: Callable[[int], Awaitable[tuple[int, int]]]) -> None:
        nonlocal next_i
        while True:
            i = next_i
            if (total is not None and i >= total) or time.monotonic() >= deadline:
                return
            next_i += 1
            due = start + (i / rate if rate is not None else 0.0)
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            t0 = time.monotonic()
            status, index = await send(i)
            t1 = time.monotonic()
            if 200 <= status < 300:
                acks.append(WriteAck(t0, t1, index))
            else:
                errors[status_label(status)] += 1
                await asyncio.sleep(0.01)

    if urlsplit(base_url).scheme == "http":  # the raw client: a fraction of aiohttp's client CPU
        await asyncio.gather(*(worker(None) for _ in range(connections)))
    else:
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = max((a.acked for a in acks), default=time.monotonic()) - start
    return WriteRun(rate, connections, start, max(elapsed, 1e-6), sorted(acks, key=lambda a: a.acked), errors,
                    next_i)
