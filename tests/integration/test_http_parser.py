"""LIST on the fast parser: a connection starts on aiohttp's C parser and switches to the
Python parser at its first LIST, without losing or repeating a request (real dev server)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.node import Node

pytestmark = pytest.mark.xdist_group("test_http_parser")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(Path(tmp_path_factory.mktemp("parser-dev")), storage="inmem")
    node.start_dev("root")
    try:
        yield node
    finally:
        node.stop()


def test_get_list_get_on_one_keep_alive_connection(dev: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    headers = {"X-Vault-Token": "root", "Content-Type": "application/json"}
    for i in range(3):
        conn.request("POST", f"/v1/secret/data/parser/k{i}", body=json.dumps({"data": {"v": i}}), headers=headers)
        assert conn.getresponse().read() and True
    conn.request("GET", "/v1/sys/health")
    first = conn.getresponse()
    assert first.status == 200 and json.loads(first.read())["initialized"] is True
    conn.request("LIST", "/v1/secret/metadata/parser", headers=headers)
    listed = conn.getresponse()
    assert listed.status == 200
    assert json.loads(listed.read())["data"]["keys"] == ["k0", "k1", "k2"]
    conn.request("GET", "/v1/secret/data/parser/k1", headers=headers)
    got = conn.getresponse()
    assert got.status == 200 and json.loads(got.read())["data"]["data"] == {"v": 1}
    conn.close()


def test_pipelined_get_and_list_in_one_segment(dev: Node) -> None:
    req = (b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n"
           b"LIST /v1/secret/metadata/parser HTTP/1.1\r\nHost: x\r\nX-Vault-Token: root\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", dev.port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2, data[:300]
    assert json.loads(data.rsplit(b"\r\n\r\n", 1)[1])["data"]["keys"] == ["k0", "k1", "k2"]


def test_unknown_method_is_still_a_clean_error(dev: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    conn.request("BREW", "/v1/secret/data/parser/k0", headers={"X-Vault-Token": "root"})
    resp = conn.getresponse()
    assert resp.status == 405 and "errors" in json.loads(resp.read())
