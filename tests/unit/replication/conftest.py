"""Fixtures for the replication shipper tests: a replication CA, servers and clients on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop
from harness import Harness

from vaultraft.raft.tls import ClusterCA
from vaultraft.replication import client as client_mod
from vaultraft.replication import server as server_mod
from vaultraft.replication.wire import ThrottledLog


#: Modules whose tests open TLS connections through the listener and client.
_ON_BOTH_LOOPS = {"test_replication_stream", "test_client_apply_batching", "test_replication_auth", "test_witness", "test_fence_stream"}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The server runs on uvloop (asyncio's loop when VAULTRAFT_EVENT_LOOP=asyncio): the
    replication listener and client are tested on both."""
    if item.module is not None and item.module.__name__ in _ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def ca() -> ClusterCA:
    """The primary's replication CA."""
    return ClusterCA.create("replication-test")


@pytest.fixture(scope="session")
def other_ca() -> ClusterCA:
    """An unrelated CA (its certificates must be refused)."""
    return ClusterCA.create("someone-else")


@pytest.fixture(autouse=True)
def unthrottled_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote-triggerable events are rate-limited per process; tests want every one."""
    monkeypatch.setattr(server_mod, "_throttled", ThrottledLog(0))
    monkeypatch.setattr(client_mod, "_throttled", ThrottledLog(0))


@pytest.fixture
async def harness(ca: ClusterCA) -> AsyncIterator[Harness]:
    h = Harness(ca)
    try:
        yield h
    finally:
        await h.aclose()
