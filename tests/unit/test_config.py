"""Server config parsing: HCL and JSON files, merging, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vaultraft.config import ConfigError, dev_config, load_config

GOOD_HCL = """
ui            = true
api_addr      = "https://vault-1:8200"
cluster_addr  = "https://vault-1:8201"
cluster_name  = "prod"
log_level     = "Warning"
disable_mlock = true
default_lease_ttl = "1h"
max_lease_ttl     = "24h"
pid_file = "/run/vault.pid"

listener "tcp" {
  address     = "127.0.0.1:8200"
  tls_disable = "1"
}

listener "tcp" {
  address         = "0.0.0.0:8300"
  cluster_address = "0.0.0.0:9301"
  tls_cert_file   = "/etc/vault/cert.pem"
  tls_key_file    = "/etc/vault/key.pem"
  tls_min_version = "tls13"
  tls_client_ca_file = "/etc/vault/ca.pem"
  tls_require_and_verify_client_cert = true
}

storage "raft" {
  path    = "/var/lib/vault"
  node_id = "node-1"
  performance_multiplier = 1
  retry_join {
    leader_api_addr = "https://vault-2:8200"
  }
  retry_join {
    leader_api_addr = "https://vault-3:8200"
  }
}

seal "pkcs11" {
  lib       = "/usr/lib/softhsm/libsofthsm2.so"
  slot      = 0
  pin       = "1234"
  key_label = "vault-hsm-key"
}

telemetry {
  disable_hostname = true
}
replication {
  resolver_discover_servers = false
}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_good_hcl(tmp_path: Path) -> None:
    cfg = load_config([write(tmp_path, "config.hcl", GOOD_HCL)])
    assert len(cfg.listeners) == 2
    plain, tls = cfg.listeners
    assert plain.address == "127.0.0.1:8200" and plain.tls_disable and plain.scheme == "http"
    assert plain.cluster_address == "127.0.0.1:8201"
    assert plain.tls_min_version == "tls12"
    assert (tls.host, tls.port, tls.cluster_address) == ("0.0.0.0", 8300, "0.0.0.0:9301")
    assert not tls.tls_disable and tls.tls_cert_file == "/etc/vault/cert.pem"
    assert tls.tls_key_file == "/etc/vault/key.pem" and tls.tls_min_version == "tls13"
    assert tls.tls_client_ca_file == "/etc/vault/ca.pem" and tls.tls_require_and_verify_client_cert
    assert cfg.storage.type == "raft" and cfg.storage.path == "/var/lib/vault"
    assert cfg.storage.node_id == "node-1"
    assert cfg.storage.retry_join == (
        {"leader_api_addr": "https://vault-2:8200"},
        {"leader_api_addr": "https://vault-3:8200"},
    )
    assert cfg.storage.options == {"performance_multiplier": 1}
    seal = cfg.seal
    assert seal is not None and seal.type == "pkcs11" and not seal.disabled
    assert seal.options["slot"] == "0" and seal.options["pin"] == "1234"
    assert "1234" not in repr(cfg)
    assert cfg.api_addr == "https://vault-1:8200" and cfg.cluster_addr == "https://vault-1:8201"
    assert cfg.cluster_name == "prod" and cfg.log_level == "warn" and cfg.log_format == "standard"
    assert cfg.ui and cfg.disable_mlock and cfg.pid_file == "/run/vault.pid"
    assert (cfg.default_lease_ttl, cfg.max_lease_ttl) == (3600, 86400)
    assert cfg.replication.vault_options == {"resolver_discover_servers": False}
    assert cfg.replication.dr_sync is False and cfg.replication.wal_retention_entries == 100_000


def test_good_json_and_defaults(tmp_path: Path) -> None:
    doc = {
        "listener": [{"tcp": {"address": "127.0.0.1:8210", "tls_disable": True}}],
        "storage": {"inmem": {}},
        "log_format": "json",
        "seal": {"shamir": {}},
    }
    cfg = load_config([write(tmp_path, "config.json", json.dumps(doc))])
    assert cfg.listeners[0].port == 8210 and cfg.listeners[0].tls_disable
    assert cfg.storage.type == "inmem"
    assert cfg.log_format == "json" and cfg.log_level == "info"
    assert (cfg.default_lease_ttl, cfg.max_lease_ttl) == (768 * 3600, 768 * 3600)
    assert cfg.seal is not None and cfg.seal.type == "shamir"
    assert not cfg.ui and cfg.api_addr is None


def test_legacy_backend_key_and_listener_default_address(tmp_path: Path) -> None:
    text = 'backend "raft" { path = "/data" }\nlistener "tcp" { tls_disable = true }\n'
    cfg = load_config([write(tmp_path, "old.hcl", text)])
    assert cfg.storage.type == "raft" and cfg.storage.path == "/data"
    assert cfg.listeners[0].address == "127.0.0.1:8200"


def test_merge_two_files(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.hcl",
        'ui = true\nlog_level = "debug"\nlistener "tcp" { address = "127.0.0.1:8200"\n tls_disable = true }\n'
        'storage "inmem" {}\n',
    )
    b = write(
        tmp_path,
        "b.json",
        json.dumps(
            {
                "log_level": "error",
                "listener": {"tcp": {"address": "127.0.0.1:8300", "tls_disable": "true"}},
                "storage": {"raft": {"path": "/raft"}},
            }
        ),
    )
    cfg = load_config([a, b])
    assert [li.port for li in cfg.listeners] == [8200, 8300]
    assert cfg.log_level == "error" and cfg.ui
    assert cfg.storage.type == "raft"
    assert cfg.files == (a, b)


def test_directory_is_its_sorted_files(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d, "10-storage.hcl", 'storage "inmem" {}\n')
    write(d, "20-listener.json", json.dumps({"listener": {"tcp": {"tls_disable": True}}}))
    write(d, "README.txt", "not config")
    cfg = load_config([str(d)])
    assert cfg.storage.type == "inmem" and len(cfg.listeners) == 1


def test_dev_config() -> None:
    cfg = dev_config("127.0.0.1:8250")
    assert cfg.dev and cfg.storage.type == "inmem"
    assert cfg.listeners[0].tls_disable and cfg.listeners[0].port == 8250
    assert cfg.api_addr == "http://127.0.0.1:8250"
    with pytest.raises(ConfigError) as e:
        dev_config("localhost:http")
    assert "not a number" in str(e.value)


OK_LISTENER = 'listener "tcp" {\n  tls_disable = true\n}\n'
OK_STORAGE = 'storage "inmem" {}\n'

BAD_CASES = [
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  tls_cert_file = "c"\n  tls_key_file = "k"\n  tls_min_version = "tls10"\n}\n',
        'listener "tcp": tls_min_version "tls10" is not supported (use tls12 or tls13)',
        id="tls10",
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  tls_cert_file = "c"\n  tls_key_file = "k"\n  tls_min_version = "tls99"\n}\n',
        'listener "tcp": tls_min_version "tls99" is not a TLS version',
        id="tls-garbage",
    ),
    pytest.param(OK_LISTENER, "missing storage stanza", id="no-storage"),
    pytest.param(OK_STORAGE, "missing listener stanza", id="no-listener"),
    pytest.param(
        OK_LISTENER + 'storage "raft" { path = "/a" }\nstorage "inmem" {}\n',
        "storage: only one storage stanza is allowed per file",
        id="two-storage",
    ),
    pytest.param(
        OK_LISTENER + 'storage "raft" { path = "/a" }\nbackend "inmem" {}\n',
        "storage and backend: only one storage stanza is allowed",
        id="storage-and-backend",
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  address = "127.0.0.1:8200"\n}\n',
        'listener "tcp": tls_cert_file is required when TLS is enabled',
        id="tls-no-cert",
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  tls_cert_file = "c"\n}\n',
        'listener "tcp": tls_key_file is required when TLS is enabled',
        id="tls-no-key",
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  address = "127.0.0.1:vault"\n  tls_disable = true\n}\n',
        'listener "tcp": address "127.0.0.1:vault": port "vault" is not a number',
        id="bad-port",
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  address = "127.0.0.1"\n  tls_disable = true\n}\n',
        'listener "tcp": address "127.0.0.1": missing port',
        id="no-port",
    ),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'default_lease_ttl = "5 days"\n',
        'default_lease_ttl: invalid duration "5 days"',
        id="bad-duration",
    ),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'default_lease_ttl = "800h"\n',
        "default_lease_ttl (2880000s) is larger than max_lease_ttl (2764800s)",
        id="ttl-order",
    ),
    pytest.param(OK_LISTENER + OK_STORAGE + 'log_level = "loud"\n', 'log_level: "loud" is not valid', id="log-level"),
    pytest.param(OK_LISTENER + OK_STORAGE + 'ui = "maybe"\n', 'ui: expected a boolean, got "maybe"', id="bad-bool"),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'frobnicate = 1\n', 'unknown key "frobnicate"', id="unknown-top-key"
    ),
    pytest.param(
        OK_STORAGE + 'listener "tcp" {\n  tls_disable = true\n  tls_ciphers = "x"\n}\n',
        'listener "tcp": unknown key "tls_ciphers"',
        id="unknown-listener-key",
    ),
    pytest.param(
        OK_STORAGE + 'listener "unix" {\n  address = "/run/v.sock"\n}\n',
        'listener "unix" is not supported',
        id="unix-listener",
    ),
    pytest.param(
        OK_LISTENER + 'storage "consul" { address = "x" }\n',
        'storage "consul" is not supported (use storage "raft" or storage "inmem")',
        id="consul",
    ),
    pytest.param(OK_LISTENER + 'storage "raft" { node_id = "n" }\n', 'storage "raft": path is required', id="raft-no-path"),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'ha_storage "raft" { path = "/x" }\n', "ha_storage is not supported", id="ha-storage"
    ),
    pytest.param(OK_LISTENER + OK_STORAGE + 'seal "awskms" { region = "x" }\n', 'seal "awskms" is not supported', id="awskms"),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'seal "pkcs11" { pin = ["1", "2"] }\n',
        'seal "pkcs11": pin must be a string',
        id="seal-option-type",
    ),
    pytest.param(
        OK_LISTENER + OK_STORAGE + 'seal "pkcs11" { lib = "x" }\nseal "shamir" {}\n',
        'seal "shamir": only one seal may be enabled',
        id="two-seals",
    ),
    pytest.param('ui = true\nlistener "tcp" {\n  address = \n}\n', "line 4: HCL parse error: unexpected RIGHTBRACE", id="hcl-syntax"),
    pytest.param('{"ui": true,\n "listener": }', "line 2: JSON parse error: Expecting value", id="json-syntax"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CASES)
def test_errors_are_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "config.hcl", text)
    with pytest.raises(ConfigError) as e:
        load_config([path])
    msg = str(e.value)
    assert msg.startswith(path + ": "), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_seal_pin_never_in_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.hcl", OK_LISTENER + OK_STORAGE + 'seal "pkcs11" { pin = { secret = "s3cr3t-pin" } }\n')
    with pytest.raises(ConfigError) as e:
        load_config([path])
    assert "s3cr3t-pin" not in str(e.value) and 'seal "pkcs11": pin' in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.hcl")
    with pytest.raises(ConfigError) as e:
        load_config([path])
    assert str(e.value) == f"{path}: cannot read config file: No such file or directory"


def test_error_in_second_file_names_that_file(tmp_path: Path) -> None:
    a = write(tmp_path, "a.hcl", OK_LISTENER + OK_STORAGE)
    b = write(tmp_path, "b.hcl", 'max_lease_ttl = "forever"\n')
    with pytest.raises(ConfigError) as e:
        load_config([a, b])
    assert str(e.value).startswith(f"{b}: max_lease_ttl: invalid duration")


def test_missing_storage_across_files_names_all(tmp_path: Path) -> None:
    a = write(tmp_path, "a.hcl", OK_LISTENER)
    b = write(tmp_path, "b.hcl", "ui = true\n")
    with pytest.raises(ConfigError) as e:
        load_config([a, b])
    assert str(e.value).startswith(f"{a}, {b}: missing storage stanza")


def test_reading_does_not_write(tmp_path: Path) -> None:
    path = write(tmp_path, "config.hcl", GOOD_HCL)
    before = sorted(os.listdir(tmp_path))
    load_config([path])
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(("stanza", "message"), [
    ('replication {\n  wat = 1\n}', 'replication: unknown key "wat"'),
    ('replication {\n  dr_sync = "maybe"\n}', "replication: dr_sync:"),
    ('replication {\n  auto_promote = true\n}', "auto_promote needs witness_address and witness_tls_bundle"),
    ('replication {\n  witness_address = "nohost"\n}', "replication: witness_address"),
    ('replication {\n  dr_sync_timeout = "0s"\n}', "dr_sync_timeout must be positive"),
])
def test_replication_stanza_errors_are_one_line(tmp_path, stanza: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.hcl"
    path.write_text('storage "raft" {\n  path = "/tmp/x"\n}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n'
                    '  tls_disable = true\n}\n' + stanza + "\n")
    with pytest.raises(ConfigError) as e:
        load_config([str(path)])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_replication_stanza_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.hcl"
    path.write_text('storage "raft" {\n  path = "/tmp/x"\n}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n'
                    '  tls_disable = true\n  replication_address = "127.0.0.1:9202"\n}\n'
                    'replication {\n  dr_sync = true\n  dr_sync_timeout = "500ms"\n  wal_retention_entries = 500\n'
                    '  auto_promote = true\n  failover_timeout = "8.5s"\n  witness_address = "127.0.0.1:8300"\n'
                    '  witness_tls_bundle = "/etc/vaultraft/witness.pem"\n}\n')
    cfg = load_config([str(path)])
    r = cfg.replication
    assert (r.dr_sync, r.dr_sync_timeout, r.wal_retention_entries, r.auto_promote, r.failover_timeout) == \
        (True, 0.5, 500, True, 8.5)
    assert cfg.listeners[0].replication_address == "127.0.0.1:9202"
