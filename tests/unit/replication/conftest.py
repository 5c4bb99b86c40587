"""Fixtures for the replication shipper tests: a replication CA, servers and clients on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from harness import Harness

from vaultraft.raft.tls import ClusterCA
from vaultraft.replication import client as client_mod
from vaultraft.replication import server as server_mod
from vaultraft.replication.wire import ThrottledLog


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
