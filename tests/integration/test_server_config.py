"""The server as an operator starts it: config errors, TLS listener (checked with openssl)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import hvac
import pytest

from cluster.node import Node, free_port, vaultraft_exe


def run_server(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([vaultraft_exe(), "server", *args], capture_output=True, text=True, timeout=timeout)


def test_bad_config_is_one_line_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = tmp_path / "bad.hcl"
    bad.write_text(f'storage "raft" {{ path = "{data}" }}\nlistener "tcp" {{ address = "127.0.0.1:x" tls_disable = true }}\n')
    r = run_server(f"-config={bad}")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "bad.hcl" in lines[0] and "listener" in lines[0]
    assert not data.exists()
    broken = tmp_path / "broken.hcl"
    broken.write_text('storage "raft" {\n  path = \n')
    r = run_server(f"-config={broken}")
    assert r.returncode == 1 and "broken.hcl" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_server(f"-config={tmp_path / 'missing.hcl'}")
    assert r.returncode == 1 and "missing.hcl" in r.stderr


@pytest.fixture
def tls_material(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_tls_listener_serves_tls12_plus_only(tmp_path: Path, tls_material: tuple[Path, Path]) -> None:
    cert, key = tls_material
    port = free_port()
    node = Node(tmp_path / "n", port=port, storage="inmem")
    node.workdir.mkdir(parents=True)
    node.config_path.write_text(
        f'listener "tcp" {{\n address = "127.0.0.1:{port}"\n tls_cert_file = "{cert}"\n tls_key_file = "{key}"\n'
        f' tls_min_version = "tls12"\n}}\nstorage "inmem" {{}}\napi_addr = "https://127.0.0.1:{port}"\n')
    log = open(node.log_path, "ab")
    node.proc = subprocess.Popen([vaultraft_exe(), "server", f"-config={node.config_path}"], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        client = hvac.Client(url=f"https://127.0.0.1:{port}", verify=str(cert))
        end = time.monotonic() + 20
        while True:
            try:
                assert client.sys.is_initialized() is False
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        # openssl sees the server's certificate and a modern protocol
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(cert),
                              "-verify_return_error"], input="", capture_output=True, text=True, timeout=20)
        assert "Verify return code: 0 (ok)" in out.stdout
        assert ("TLSv1.3" in out.stdout) or ("TLSv1.2" in out.stdout)
        # TLS 1.1 is refused
        old = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1"],
                             input="", capture_output=True, text=True, timeout=20)
        assert old.returncode != 0 or "Cipher is (NONE)" in old.stdout
    finally:
        node.stop()
        assert os.path.exists(node.log_path)
