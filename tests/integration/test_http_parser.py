"""The API's HTTP server against a real dev server.

LIST on the fast parser: a connection starts on aiohttp's C parser and switches to the
Python parser at its first LIST, without losing or repeating a request. The low-level
server's own routing: Vault's 404 outside ``/v1/``, ``Expect: 100-continue`` answered before
the body is sent, and a body over the size limit refused with 413."""

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


def test_paths_outside_v1_get_vaults_404(dev: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    for path in ("/", "/v1", "/v2/secret/data/x", "/ui/"):
        conn.request("GET", path, headers={"X-Vault-Token": "root"})
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (404, {"errors": []}), path
    conn.close()


def _read_head(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_expect_100_continue_is_answered_before_the_body_is_sent(dev: Node) -> None:
    body = json.dumps({"data": {"v": "expect"}}).encode()
    head = (b"POST /v1/secret/data/parser/expect HTTP/1.1\r\nHost: x\r\nX-Vault-Token: root\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", dev.port), timeout=10) as s:
        s.sendall(head)
        assert _read_head(s) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["data"]["version"] == 1
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    conn.request("GET", "/v1/secret/data/parser/expect", headers={"X-Vault-Token": "root"})
    assert json.loads(conn.getresponse().read())["data"]["data"] == {"v": "expect"}


def test_an_unknown_expectation_is_417_and_writes_nothing(dev: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    conn.request("POST", "/v1/secret/data/parser/expect417", body=json.dumps({"data": {"v": 1}}),
                 headers={"X-Vault-Token": "root", "Expect": "200-ok"})
    resp = conn.getresponse()
    assert resp.status == 417 and json.loads(resp.read())["errors"] == ["unsupported expectation: 200-ok"]
    conn.request("GET", "/v1/secret/data/parser/expect417", headers={"X-Vault-Token": "root"})
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read()


def test_a_body_over_the_size_limit_is_413_and_writes_nothing(dev: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=30)
    under = json.dumps({"data": {"v": "x" * (2 * 1024 * 1024)}}).encode()  # over aiohttp's 1 MiB default
    conn.request("POST", "/v1/secret/data/parser/big", body=under, headers={"X-Vault-Token": "root"})
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["data"]["version"] == 1
    over = json.dumps({"data": {"v": "x" * (32 * 1024 * 1024)}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=30)
    conn.request("POST", "/v1/secret/data/parser/huge", body=over, headers={"X-Vault-Token": "root"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["errors"]
    conn = http.client.HTTPConnection("127.0.0.1", dev.port, timeout=10)
    conn.request("GET", "/v1/secret/data/parser/huge", headers={"X-Vault-Token": "root"})
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read()
