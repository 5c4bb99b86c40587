"""Helpers for the replication shipper tests: waiting, a server/client harness, raw peers."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaultraft.raft.tls import ClusterCA, NodeCert, client_context
from vaultraft.replication.client import ClientConfig, ReplicationClient
from vaultraft.replication.interfaces import Mode, ReplicaSink, WalSource
from vaultraft.replication.registry import SecondaryRegistry
from vaultraft.replication.server import ReplicationServer, ServerConfig
from vaultraft.replication.wire import encode_message, pack, parse_addr


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until ``pred()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


FAST_SERVER: dict[str, Any] = {"heartbeat_interval": 0.05, "state_check_interval": 0.05, "handshake_timeout": 2.0}
FAST_CLIENT: dict[str, Any] = {"backoff_initial": 0.02, "backoff_max": 0.1, "idle_timeout": 3.0, "connect_timeout": 2.0}


@dataclass
class Harness:
    """Starts servers and clients and tears everything down after the test."""

    ca: ClusterCA
    servers: list[ReplicationServer] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def server(self, source: WalSource, registry: SecondaryRegistry, *, node_id: str = "primary-1",
                     cert: NodeCert | None = None, **config: Any) -> ReplicationServer:
        srv = ReplicationServer(source, registry, cert or self.ca.issue(node_id), "127.0.0.1", 0,
                                config=ServerConfig(**{**FAST_SERVER, **config}))
        await srv.start()
        self.servers.append(srv)
        return srv

    def client(self, sink: ReplicaSink, addrs: list[str], mode: Mode = "dr", *, secondary_id: str = "sec-a",
               cert: NodeCert | None = None, **config: Any) -> ReplicationClient:
        return ReplicationClient(sink, cert or self.ca.issue(secondary_id), addrs, mode,
                                 secondary_id=secondary_id, config=ClientConfig(**{**FAST_CLIENT, **config}))

    def run(self, client: ReplicationClient) -> asyncio.Task[None]:
        task = asyncio.create_task(client.run())
        self.tasks.append(task)
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for srv in self.servers:
            await srv.aclose()


# -- raw protocol peers ------------------------------------------------------------------------

def raw_context(cert: NodeCert | None, ca_pem: bytes) -> ssl.SSLContext:
    """A client context presenting ``cert`` (or no certificate) and trusting only ``ca_pem``."""
    if cert is not None:
        return client_context(dataclasses.replace(cert, ca_pem=ca_pem))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


async def raw_connect(addr: str, ctx: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TLS (or, with ``ctx=None``, plain TCP) connection to ``addr``."""
    host, port = parse_addr(addr)
    return await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), 5)


def frame(obj: Any) -> bytes:
    """A raw frame holding ``obj`` (a message or any msgpack value)."""
    body = pack(encode_message(obj) if hasattr(obj, "TYPE") else obj)
    return len(body).to_bytes(4, "big") + body


async def read_to_close(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything the server sends until it closes (TLS errors count as a close)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except (ssl.SSLError, ConnectionError):
        pass
    return data
