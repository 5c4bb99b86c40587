"""cluster.node.free_port: ports a server can still bind when it starts, under parallel tests."""

from __future__ import annotations

import socket

import pytest

from cluster.node import FREE_PORT_RANGE, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low, high = FREE_PORT_RANGE
    assert all(low <= p < high for p in ports) and high <= ephemeral_low
    for p in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.node as node_mod

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        spare = list(range(FREE_PORT_RANGE[1] - 50, FREE_PORT_RANGE[1]))
        picks = iter([busy_port, busy_port, *spare])

        class Scripted:
            def randrange(self, low: int, high: int) -> int:
                return next(picks)

        monkeypatch.setattr(node_mod.random, "SystemRandom", Scripted)
        monkeypatch.setattr(node_mod, "_handed_out", set())
        got = free_port()
    assert got != busy_port and got in spare  # the busy port was drawn twice and skipped twice
