"""CLI output (tables, JSON, raw fields) and the HTTP client's request/error rendering.

The HTTP tests talk to ``CannedVault``: a TEST DOUBLE for unit level only — a tiny stdlib
HTTP server in a thread that answers canned Vault JSON and records what it was sent. It
checks the client's requests and its rendering of answers, never server behaviour (the
integration tests run the CLI against a real vaultraft server).
"""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from vaultraft.cli.base import Context
from vaultraft.cli.client import ResponseError, Secret
from vaultraft.cli.main import run
from vaultraft.cli.operator import seal_status_document, seal_status_table
from vaultraft.cli.output import (
    columnize,
    go_json,
    go_value,
    header_for_map,
    human_duration,
    list_table,
    map_table,
    pad_equal_signs,
    raw_field,
    secret_table,
    wrap_at_length,
)

# --- pure rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (3601, "1h1s"), (3660, "1h1m"), (2764800, "768h"), (90061, "25h1m1s")],
)
def test_human_durations_match_vault(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_values_render_as_go_percent_v() -> None:
    assert go_value(None) == "<nil>"
    assert go_value(True) == "true"
    assert go_value(["default", "ops"]) == "[default ops]"
    assert go_value({"username": "user1", "a": [1, {"b": False}]}) == "map[a:[1 map[b:false]] username:user1]"
    assert go_value(3) == "3"


def test_kv_metadata_table_is_byte_identical_to_vault() -> None:
    # Captured from `vault kv put` (Vault 1.21): columns, n/a for "", <nil> for null.
    metadata = {
        "version": 1,
        "destroyed": False,
        "deletion_time": "",
        "custom_metadata": None,
        "created_time": "2026-04-09T19:39:18.855022475Z",
    }
    assert header_for_map("Metadata", metadata) == "======= Metadata ======="
    assert map_table(metadata) == (
        "Key                Value\n"
        "---                -----\n"
        "created_time       2026-04-09T19:39:18.855022475Z\n"
        "custom_metadata    <nil>\n"
        "deletion_time      n/a\n"
        "destroyed          false\n"
        "version            1"
    )


def test_section_banners() -> None:
    assert pad_equal_signs("Secret Path", len("secret/data/devops-info-service/config")) == "============= Secret Path ============="
    assert header_for_map("Data", {"password": 1, "username": 2}) == "====== Data ======"
    assert pad_equal_signs("Metadata Path", 3) == "== Metadata Path =="


def test_ttl_looking_keys_print_as_durations_only_when_integers() -> None:
    table = map_table({"creation_ttl": 2764800, "ttl": "768h", "explicit_max_ttl": 0, "period": None})
    assert "creation_ttl        768h\n" in table
    assert "explicit_max_ttl    0s\n" in table
    assert "ttl                 768h" in table
    assert "period              <nil>" in table


def test_auth_secret_table_shows_the_token_block() -> None:
    secret = Secret(auth={"client_token": "hvs.X", "accessor": "acc", "lease_duration": 0, "renewable": False,
                          "token_policies": ["root"], "identity_policies": [], "policies": ["root"]})
    assert secret_table(secret) == (
        "Key                  Value\n"
        "---                  -----\n"
        "token                hvs.X\n"
        "token_accessor       acc\n"
        "token_duration       ∞\n"
        "token_renewable      false\n"
        'token_policies       ["root"]\n'
        "identity_policies    []\n"
        'policies             ["root"]'
    )


def test_leases_and_refresh_interval_rows() -> None:
    leased = Secret(lease_id="db/creds/r/abc", lease_duration=3600, renewable=True, data={"username": "v-1"})
    assert secret_table(leased).splitlines()[2:] == [
        "lease_id           db/creds/r/abc",
        "lease_duration     1h",
        "lease_renewable    true",
        "username           v-1",
    ]
    kv1 = Secret(lease_duration=2764800, data={"a": "b"})
    assert "refresh_interval    768h" in secret_table(kv1)
    assert secret_table(Secret()) == ""


def test_list_table_sorts_keys() -> None:
    assert list_table(["b/", "a"]) == "Keys\n----\na\nb/"
    assert list_table([]) == ""


def test_columnize_widths_and_empty_cells() -> None:
    assert columnize(["Path | Type | Description", "----|----|-----------", "file/ | file | "]) == (
        "Path     Type    Description\n----     ----    -----------\nfile/    file    n/a"
    )


def test_go_json_sorts_maps_keeps_struct_order_and_escapes_html() -> None:
    doc = {"request_id": "r", "data": {"z": 1, "a": "<b>&"}}
    assert go_json(doc, sort_top=False) == '{\n  "request_id": "r",\n  "data": {\n    "a": "\\u003cb\\u003e\\u0026",\n    "z": 1\n  }\n}'
    assert go_json({"b": 1, "a": 2}) == '{\n  "a": 2,\n  "b": 1\n}'


def test_raw_field_lookup_rules() -> None:
    auth = Secret(auth={"client_token": "hvs.T", "accessor": "A", "policies": ["p"]}, data={"x": 1})
    assert raw_field(auth, "token") == "hvs.T"
    assert raw_field(auth, "token_accessor") == "A"
    assert raw_field(auth, "x") == 1
    plain = Secret(request_id="rid", lease_duration=30, data={"data": {"k": "v"}, "other": 2})
    assert raw_field(plain, "request_id") == "rid"
    assert raw_field(plain, "refresh_interval") == 30
    assert raw_field(plain, "data") == {"k": "v"}
    assert raw_field(plain, "missing") is None


def test_prose_wraps_like_vault() -> None:
    text = wrap_at_length(
        "Vault initialized with 5 key shares and a key threshold of 3. Please securely distribute the "
        "key shares printed above. When the Vault is re-sealed, restarted, or stopped, you must supply "
        "at least 3 of these keys to unseal it before it can start servicing requests."
    )
    assert text == (
        "Vault initialized with 5 key shares and a key threshold of 3. Please securely\n"
        "distribute the key shares printed above. When the Vault is re-sealed,\n"
        "restarted, or stopped, you must supply at least 3 of these keys to unseal it\n"
        "before it can start servicing requests."
    )


def test_seal_status_table_sealed_and_unsealed() -> None:
    sealed = seal_status_document(
        {"type": "shamir", "initialized": True, "sealed": True, "t": 3, "n": 5, "progress": 1, "nonce": "",
         "version": "1.15.0", "build_date": "", "storage_type": "raft"},
        {"ha_enabled": False},
    )
    assert seal_status_table(sealed) == (
        "Key                Value\n"
        "---                -----\n"
        "Seal Type          shamir\n"
        "Initialized        true\n"
        "Sealed             true\n"
        "Total Shares       5\n"
        "Threshold          3\n"
        "Unseal Progress    1/3\n"
        "Unseal Nonce       n/a\n"
        "Version            1.15.0\n"
        "Build Date         n/a\n"
        "Storage Type       raft\n"
        "HA Enabled         false"
    )
    active = seal_status_document(
        {"type": "shamir", "initialized": True, "sealed": False, "t": 1, "n": 1, "cluster_name": "c1", "cluster_id": "id1"},
        {"ha_enabled": True, "is_self": True, "leader_cluster_address": "https://n1:8201", "raft_committed_index": 42},
    )
    lines = seal_status_table(active).splitlines()
    assert "Cluster Name            c1" in lines
    assert "HA Mode                 active" in lines
    assert "HA Cluster              https://n1:8201" in lines
    assert "Raft Committed Index    42" in lines
    assert not any(line.startswith("Unseal Progress") for line in lines)


def test_response_error_text_matches_vaults_api() -> None:
    err = ResponseError("PUT", "http://h:8200/v1/secret/data/foo", 403, ["permission denied"])
    assert str(err) == "Error making API request.\n\nURL: PUT http://h:8200/v1/secret/data/foo\nCode: 403. Errors:\n\n* permission denied"
    raw = ResponseError("GET", "http://h/v1/x", 502, ["<html>bad gateway</html>"], raw=True)
    assert str(raw).endswith("Code: 502. Raw Message:\n\n<html>bad gateway</html>")


# --- the HTTP test double ------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class CannedVault:
    """TEST DOUBLE (unit level): answers (method, path) with canned (status, JSON) and records requests."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path: str, status: int, body: Any = None) -> None:
        self.routes[(method, path)] = (status, body)

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


def _handler(double: CannedVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            double.seen.append(Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body))
            status, payload = double.routes.get((self.command, parts.path), (404, {"errors": []}))
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/html"
            else:
                data, ctype = (b"" if payload is None else json.dumps(payload).encode()), "application/json"
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", str(payload))
                data = b""
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _answer

    return Handler


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[ThreadingHTTPServer, CannedVault]]:
    double = CannedVault()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(double))
    double.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, double
    server.shutdown()
    server.server_close()


@pytest.fixture
def vault(_server: tuple[ThreadingHTTPServer, CannedVault]) -> CannedVault:
    double = _server[1]
    double.routes.clear()
    double.seen.clear()
    return double


Invoke = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(vault: CannedVault, tmp_path: Path) -> Invoke:
    def invoke(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        environ = {"VAULT_ADDR": vault.url, "VAULT_TOKEN": "hvs.test", "HOME": str(tmp_path), **(env or {})}
        code = run(list(argv), Context(stdin=io.StringIO(stdin), stdout=out, stderr=err, environ=environ))
        return code, out.getvalue(), err.getvalue()

    return invoke


KV2_MOUNT = {"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}}
KV2_READ = {
    "request_id": "rid",
    "lease_id": "",
    "lease_duration": 0,
    "renewable": False,
    "data": {
        "data": {"password": "hunter2", "username": "alice"},
        "metadata": {"created_time": "2024-01-01T00:00:00Z", "custom_metadata": None, "deletion_time": "", "destroyed": False, "version": 3},
    },
    "warnings": None,
    "mount_type": "kv",
}


def test_server_errors_print_like_vault_and_exit_2(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret/foo", 200, KV2_MOUNT)
    vault.on("PUT", "/v1/secret/data/foo", 403, {"errors": ["permission denied"]})
    code, out, err = cli("kv", "put", "secret/foo", "a=b")
    assert code == 2
    assert out == ""
    assert err == (
        "Error writing data to secret/data/foo: Error making API request.\n\n"
        f"URL: PUT {vault.url}/v1/secret/data/foo\nCode: 403. Errors:\n\n* permission denied\n"
    )


def test_kv_get_missing_falls_back_to_sys_mounts_and_exits_2(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/mounts", 200, {"data": {"secret/": {"type": "kv", "options": {"version": "2"}}, "sys/": {"type": "system"}}})
    code, out, err = cli("kv", "get", "secret/foo")
    assert (code, out, err) == (2, "", "No value found at secret/data/foo\n")
    assert [s.path for s in vault.seen] == ["/v1/sys/internal/ui/mounts/secret/foo", "/v1/sys/mounts", "/v1/secret/data/foo"]


def test_kv_get_prints_vaults_sections(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret/app/db", 200, KV2_MOUNT)
    vault.on("GET", "/v1/secret/data/app/db", 200, KV2_READ)
    code, out, err = cli("kv", "get", "-version=3", "secret/app/db")
    assert code == 0, err
    assert out == (
        "=== Secret Path ===\n"
        "secret/data/app/db\n"
        "\n"
        "======= Metadata =======\n"
        "Key                Value\n"
        "---                -----\n"
        "created_time       2024-01-01T00:00:00Z\n"
        "custom_metadata    <nil>\n"
        "deletion_time      n/a\n"
        "destroyed          false\n"
        "version            3\n"
        "\n"
        "====== Data ======\n"
        "Key         Value\n"
        "---         -----\n"
        "password    hunter2\n"
        "username    alice\n"
    )
    assert vault.requests("/v1/secret/data/app/db")[0].query == {"version": ["3"]}
    assert vault.seen[-1].headers["X-Vault-Token"] == "hvs.test"


def test_kv_get_field_is_raw_and_json_is_the_whole_response(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret/foo", 200, KV2_MOUNT)
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret", 200, KV2_MOUNT)
    vault.on("GET", "/v1/secret/data/foo", 200, KV2_READ)
    assert cli("-mount=secret", "foo")[0] == 127  # flags belong after the command words
    assert cli("kv", "get", "-field=password", "-mount=secret", "foo") == (0, "hunter2", "")
    assert cli("kv", "get", "-field=nope", "secret/foo") == (1, "", 'Field "nope" not present in secret\n')
    code, out, _ = cli("kv", "get", "-format=json", "secret/foo")
    assert code == 0
    assert list(json.loads(out)) == ["request_id", "lease_id", "lease_duration", "renewable", "data", "warnings", "mount_type"]
    assert json.loads(out)["data"]["data"] == {"password": "hunter2", "username": "alice"}


def test_kv_put_sends_v2_envelope_and_prints_metadata(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret/foo", 200, KV2_MOUNT)
    vault.on("PUT", "/v1/secret/data/foo", 200, {"data": {"created_time": "t", "custom_metadata": None, "deletion_time": "", "destroyed": False, "version": 1}})
    code, out, _ = cli("kv", "put", "-cas=0", "secret/foo", "user=alice", "-", stdin='{"n": 1}')
    assert code == 0
    assert vault.requests("/v1/secret/data/foo")[0].body == {"data": {"user": "alice", "n": 1}, "options": {"cas": 0}}
    assert out.startswith("= Secret Path =\nsecret/data/foo\n\n======= Metadata =======\nKey                Value\n")
    assert cli("kv", "put", "-field=version", "secret/foo", "a=b") == (0, "1", "")


def test_kv_v1_paths_have_no_data_prefix(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/kv1/foo", 200, {"data": {"path": "kv1/", "type": "kv", "options": None}})
    vault.on("PUT", "/v1/kv1/foo", 204)
    vault.on("GET", "/v1/kv1/foo", 200, {"data": {"a": "b"}, "lease_duration": 2764800})
    assert cli("kv", "put", "kv1/foo", "a=b") == (0, "Success! Data written to: kv1/foo\n", "")
    assert vault.requests("/v1/kv1/foo")[0].body == {"a": "b"}
    code, out, _ = cli("kv", "get", "kv1/foo")
    assert (code, out) == (0, "== Data ==\nKey    Value\n---    -----\na      b\n")
    assert cli("kv", "metadata", "get", "kv1/foo") == (1, "", "Metadata not supported on KV Version 1\n")


def test_kv_list_delete_undelete_destroy_and_metadata(cli: Invoke, vault: CannedVault) -> None:
    for p in ("app", "app/db"):
        vault.on("GET", f"/v1/sys/internal/ui/mounts/secret/{p}", 200, KV2_MOUNT)
    vault.on("GET", "/v1/secret/metadata/app", 200, {"data": {"keys": ["db", "api/"]}})
    assert cli("kv", "list", "secret/app") == (0, "Keys\n----\napi/\ndb\n", "")
    assert vault.requests("/v1/secret/metadata/app")[0].query == {"list": ["true"]}
    vault.on("PUT", "/v1/secret/delete/app/db", 204)
    assert cli("kv", "delete", "-versions=1,2", "secret/app/db") == (0, "Success! Data deleted (if it existed) at: secret/data/app/db\n", "")
    assert vault.requests("/v1/secret/delete/app/db")[0].body == {"versions": [1, 2]}
    vault.on("DELETE", "/v1/secret/data/app/db", 204)
    assert cli("kv", "delete", "secret/app/db")[1] == "Success! Data deleted (if it existed) at: secret/data/app/db\n"
    vault.on("PUT", "/v1/secret/destroy/app/db", 204)
    assert cli("kv", "destroy", "-versions=3", "secret/app/db") == (0, "Success! Data written to: secret/destroy/app/db\n", "")
    vault.on("PUT", "/v1/secret/metadata/app/db", 204)
    code, _, _ = cli("kv", "metadata", "put", "-max-versions=5", "-cas-required", "-delete-version-after=1h", "-custom-metadata=team=ops", "secret/app/db")
    assert code == 0
    assert vault.requests("/v1/secret/metadata/app/db")[-1].body == {
        "max_versions": 5, "cas_required": True, "delete_version_after": "3600s", "custom_metadata": {"team": "ops"}
    }
    vault.on("GET", "/v1/secret/metadata/app/db", 200, {"data": {"current_version": 2, "max_versions": 0, "versions": {
        "2": {"created_time": "t2", "deletion_time": "", "destroyed": False},
        "10": {"created_time": "t10", "deletion_time": "", "destroyed": True},
    }}})
    code, out, _ = cli("kv", "metadata", "get", "secret/app/db")
    assert code == 0
    assert out.startswith("==== Metadata Path ====\nsecret/metadata/app/db\n\n")
    assert out.index("=== Version 2 ===") < out.index("=== Version 10 ===")
    assert "current_version    2\n" in out


def test_kv_patch_falls_back_to_read_then_write_on_405(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/internal/ui/mounts/secret/foo", 200, KV2_MOUNT)
    vault.on("PATCH", "/v1/secret/data/foo", 405, {"errors": ["unsupported operation"]})
    vault.on("GET", "/v1/secret/data/foo", 200, KV2_READ)
    vault.on("PUT", "/v1/secret/data/foo", 200, {"data": {"version": 4}})
    code, _, err = cli("kv", "patch", "-remove-data=username", "secret/foo", "password=new")
    assert code == 0, err
    patch = vault.requests("/v1/secret/data/foo")[0]
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.body == {"data": {"password": "new", "username": None}, "options": {}}
    assert vault.requests("/v1/secret/data/foo")[-1].body == {"data": {"password": "new"}, "options": {"cas": 3}}


def test_generic_read_write_list_delete(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/cubbyhole/x", 200, {"data": {"k": "v"}})
    assert cli("read", "-field=k", "/cubbyhole/x/") == (0, "v", "")
    assert cli("read", "cubbyhole/none") == (2, "", "No value found at cubbyhole/none\n")
    vault.on("PUT", "/v1/cubbyhole/x", 204)
    assert cli("write", "cubbyhole/x", "k=v", "n=1") == (0, "Success! Data written to: cubbyhole/x\n", "")
    assert cli("write", "-format=json", "cubbyhole/x", "k=v") == (0, "", "")
    vault.on("GET", "/v1/cubbyhole/", 200, {"data": {"keys": ["x"]}})
    assert cli("list", "cubbyhole") == (0, "Keys\n----\nx\n", "")
    assert cli("list", "-format=json", "cubbyhole") == (0, '[\n  "x"\n]\n', "")
    assert cli("list", "nothing") == (2, "", "No value found at nothing/\n")
    assert cli("list", "-format=json", "nothing") == (2, "{}\n", "")
    vault.on("DELETE", "/v1/cubbyhole/x", 204)
    assert cli("delete", "cubbyhole/x") == (0, "Success! Data deleted (if it existed) at: cubbyhole/x\n", "")


def test_raw_error_bodies_and_redirects(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/broken", 502, "<html>bad gateway</html>")
    code, _, err = cli("read", "sys/broken")
    assert code == 2 and err.endswith("Code: 502. Raw Message:\n\n<html>bad gateway</html>\n")
    vault.on("PUT", "/v1/secret/standby", 307, f"{vault.url}/v1/secret/active")
    vault.on("PUT", "/v1/secret/active", 204)
    assert cli("write", "secret/standby", "a=b")[0] == 0
    assert vault.requests("/v1/secret/active")[0].method == "PUT"
    assert vault.requests("/v1/secret/active")[0].body == {"a": "b"}


def test_unreachable_server_is_a_remote_error(cli: Invoke) -> None:
    code, _, err = cli("read", "secret/x", env={"VAULT_ADDR": "http://127.0.0.1:9"})
    assert code == 2
    assert err.startswith('Error reading secret/x: Get "http://127.0.0.1:9/v1/secret/x": ')
    code, _, err = cli("status", env={"VAULT_ADDR": "http://127.0.0.1:9"})
    assert code == 1 and err.startswith("Error checking seal status: ")


SEALED = {"type": "shamir", "initialized": True, "sealed": True, "t": 3, "n": 5, "progress": 0, "nonce": "", "version": "1.15.0"}


def test_status_exit_codes_and_json(cli: Invoke, vault: CannedVault) -> None:
    vault.on("GET", "/v1/sys/seal-status", 200, SEALED)
    vault.on("GET", "/v1/sys/leader", 503, {"errors": ["Vault is sealed"]})
    code, out, _ = cli("status")
    assert code == 2 and "Sealed             true" in out and "Unseal Progress    0/3" in out
    vault.on("GET", "/v1/sys/seal-status", 200, {**SEALED, "sealed": False, "t": 1, "n": 1})
    vault.on("GET", "/v1/sys/leader", 200, {"ha_enabled": False, "is_self": False, "leader_address": ""})
    code, out, _ = cli("status", "-format=json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc)[:3] == ["type", "initialized", "sealed"]
    assert doc["ha_enabled"] is False and "is_self" not in doc


def test_operator_init_prints_keys_and_root_token(cli: Invoke, vault: CannedVault) -> None:
    vault.on("PUT", "/v1/sys/init", 200, {"keys": ["aa", "bb"], "keys_base64": ["qg==", "uw=="], "root_token": "hvs.root"})
    vault.on("GET", "/v1/sys/seal-status", 200, {"type": "shamir", "initialized": False, "recovery_seal": False})
    code, out, _ = cli("operator", "init", "-key-shares=2", "-key-threshold=2")
    assert code == 0
    assert vault.requests("/v1/sys/init")[0].body == {"secret_shares": 2, "secret_threshold": 2}
    assert out.startswith("Unseal Key 1: qg==\nUnseal Key 2: uw==\n\nInitial Root Token: hvs.root\n\n")
    assert "Vault initialized with 2 key shares and a key threshold of 2." in out
    code, out, _ = cli("operator", "init", "-format=json")
    assert json.loads(out) == {
        "unseal_keys_b64": ["qg==", "uw=="], "unseal_keys_hex": ["aa", "bb"], "unseal_shares": 5, "unseal_threshold": 3,
        "recovery_keys_b64": [], "recovery_keys_hex": [], "recovery_keys_shares": 0, "recovery_keys_threshold": 0,
        "root_token": "hvs.root",
    }
    vault.on("GET", "/v1/sys/init", 200, {"initialized": False})
    assert cli("operator", "init", "-status") == (2, "Vault is not initialized\n", "")


def test_operator_unseal_reads_the_key_from_stdin_and_seal(cli: Invoke, vault: CannedVault) -> None:
    vault.on("PUT", "/v1/sys/unseal", 200, {**SEALED, "progress": 1})
    vault.on("GET", "/v1/sys/leader", 200, {"ha_enabled": False})
    code, out, _ = cli("operator", "unseal", stdin="key-share-1\n")
    assert code == 0 and "Unseal Progress    1/3" in out
    assert vault.requests("/v1/sys/unseal")[0].body == {"key": "key-share-1"}
    cli("operator", "unseal", "-reset")
    assert vault.requests("/v1/sys/unseal")[-1].body == {"reset": True}
    vault.on("PUT", "/v1/sys/seal", 204)
    assert cli("operator", "seal") == (0, "Success! Vault is sealed.\n", "")


def test_login_verifies_then_stores_the_token_with_mode_0600(cli: Invoke, vault: CannedVault, tmp_path: Path) -> None:
    vault.on("GET", "/v1/auth/token/lookup-self", 200, {"data": {"accessor": "acc", "policies": ["default", "ops"], "ttl": 3600, "renewable": True}})
    code, out, err = cli("login", "hvs.new", env={"VAULT_TOKEN": ""})
    assert code == 0, err
    assert vault.seen[-1].headers["X-Vault-Token"] == "hvs.new"
    stored = tmp_path / ".vault-token"
    assert stored.read_text() == "hvs.new"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    assert out.startswith(
        "Success! You are now authenticated. The token information displayed below\n"
        'is already stored in the token helper. You do NOT need to run "vault login"\n'
        "again. Future Vault requests will automatically use this token.\n\n"
    )
    assert "token_duration       1h\n" in out and 'policies             ["default" "ops"]' in out
    # The stored token is what later commands send when VAULT_TOKEN is unset.
    vault.on("GET", "/v1/cubbyhole/x", 200, {"data": {"k": "v"}})
    cli("read", "cubbyhole/x", env={"VAULT_TOKEN": ""})
    assert vault.seen[-1].headers["X-Vault-Token"] == "hvs.new"
    vault.on("GET", "/v1/auth/token/lookup-self", 403, {"errors": ["permission denied"]})
    code, _, err = cli("login", "-", stdin="hvs.bad\n")
    assert code == 2 and err.startswith("Error authenticating: error looking up token: Error making API request.")
    assert stored.read_text() == "hvs.new"


def test_token_commands(cli: Invoke, vault: CannedVault) -> None:
    vault.on("POST", "/v1/auth/token/create-orphan", 200, {"auth": {"client_token": "hvs.c", "accessor": "a", "lease_duration": 600, "renewable": True, "policies": ["default", "ops"], "token_policies": ["default", "ops"]}})
    code, out, _ = cli("token", "create", "-orphan", "-policy=ops", "-ttl=10m", "-use-limit=2", "-metadata=team=x", "-field=token")
    assert (code, out) == (0, "hvs.c")
    assert vault.requests("/v1/auth/token/create-orphan")[0].body == {
        "display_name": "", "num_uses": 2, "renewable": True, "policies": ["ops"], "meta": {"team": "x"}, "ttl": "600s"
    }
    vault.on("GET", "/v1/auth/token/lookup-self", 200, {"data": {"id": "hvs.test", "ttl": 0, "policies": ["root"]}})
    code, out, _ = cli("token", "lookup")
    assert code == 0 and "ttl         0s" in out and "policies    [root]" in out
    vault.on("POST", "/v1/auth/token/lookup-accessor", 200, {"data": {"accessor": "a"}})
    assert cli("token", "lookup", "-accessor", "a")[0] == 0
    assert vault.requests("/v1/auth/token/lookup-accessor")[0].body == {"accessor": "a"}
    vault.on("PUT", "/v1/auth/token/renew-self", 200, {"auth": {"client_token": "hvs.test", "lease_duration": 7200}})
    assert cli("token", "renew", "-increment=2h")[0] == 0
    assert vault.requests("/v1/auth/token/renew-self")[0].body == {"increment": 7200}
    vault.on("PUT", "/v1/auth/token/revoke-orphan", 204)
    assert cli("token", "revoke", "-mode=orphan", "hvs.c") == (0, "Success! Revoked token (if it existed)\n", "")
    assert vault.requests("/v1/auth/token/revoke-orphan")[0].body == {"token": "hvs.c"}


def test_policy_commands(cli: Invoke, vault: CannedVault, tmp_path: Path) -> None:
    hcl = 'path "secret/*" { capabilities = ["read"] }\n'
    (tmp_path / "p.hcl").write_text(hcl)
    vault.on("PUT", "/v1/sys/policies/acl/ops", 204)
    assert cli("policy", "write", "OPS", str(tmp_path / "p.hcl")) == (0, "Success! Uploaded policy: ops\n", "")
    assert vault.requests("/v1/sys/policies/acl/ops")[0].body == {"policy": hcl}
    assert cli("policy", "write", "ops", "-", stdin=hcl)[0] == 0
    assert cli("policy", "write", "ops", str(tmp_path / "nope.hcl"))[0] == 2
    vault.on("GET", "/v1/sys/policies/acl/ops", 200, {"data": {"name": "ops", "policy": hcl}})
    assert cli("policy", "read", "ops") == (0, hcl, "")
    assert cli("policy", "read", "ghost") == (2, "", "No policy named: ghost\n")
    vault.on("GET", "/v1/sys/policies/acl", 200, {"data": {"keys": ["default", "ops", "root"]}})
    assert cli("policy", "list") == (0, "default\nops\nroot\n", "")
    vault.on("DELETE", "/v1/sys/policies/acl/ops", 204)
    assert cli("policy", "delete", "ops") == (0, "Success! Deleted policy: ops\n", "")


def test_secrets_and_audit_commands(cli: Invoke, vault: CannedVault) -> None:
    vault.on("POST", "/v1/sys/mounts/kv", 204)
    assert cli("secrets", "enable", "-path=kv", "-version=2", "-description=team kv", "kv") == (0, "Success! Enabled the kv secrets engine at: kv/\n", "")
    assert vault.requests("/v1/sys/mounts/kv")[0].body == {
        "type": "kv", "description": "team kv", "config": {}, "local": False, "seal_wrap": False,
        "external_entropy_access": False, "options": {"version": "2"},
    }
    vault.on("GET", "/v1/sys/mounts", 200, {"data": {
        "secret/": {"type": "kv", "accessor": "kv_1", "description": "", "options": {"version": "2"}, "config": {"default_lease_ttl": 0, "max_lease_ttl": 0}},
        "cubbyhole/": {"type": "cubbyhole", "accessor": "cubbyhole_1", "description": "per-token private secret storage", "config": {}},
    }})
    assert cli("secrets", "list")[1] == (
        "Path          Type         Accessor       Description\n"
        "----          ----         --------       -----------\n"
        "cubbyhole/    cubbyhole    cubbyhole_1    per-token private secret storage\n"
        "secret/       kv           kv_1           n/a\n"
    )
    assert "map[version:2]" in cli("secrets", "list", "-detailed")[1]
    vault.on("POST", "/v1/sys/mounts/secret/tune", 204)
    assert cli("secrets", "tune", "-max-lease-ttl=2h", "secret/")[1] == "Success! Tuned the secrets engine at: secret/\n"
    assert vault.requests("/v1/sys/mounts/secret/tune")[0].body == {"max_lease_ttl": "7200s"}
    vault.on("DELETE", "/v1/sys/mounts/kv", 204)
    assert cli("secrets", "disable", "kv")[1] == "Success! Disabled the secrets engine (if it existed) at: kv/\n"
    vault.on("GET", "/v1/sys/audit", 200, {"data": {}})
    assert cli("audit", "list") == (2, "No audit devices are enabled.\n", "")
    vault.on("PUT", "/v1/sys/audit/file", 204)
    assert cli("audit", "enable", "file", "file_path=/tmp/audit.log") == (0, "Success! Enabled the file audit device at: file/\n", "")
    assert vault.requests("/v1/sys/audit/file")[0].body == {"type": "file", "description": "", "options": {"file_path": "/tmp/audit.log"}, "local": False}
    vault.on("GET", "/v1/sys/audit", 200, {"data": {"file/": {"type": "file", "path": "file/", "description": "", "options": {"file_path": "/tmp/a"}}}})
    assert cli("audit", "list", "-detailed")[1].splitlines()[2] == "file/    file    n/a            replicated     map[file_path:/tmp/a]"
    vault.on("DELETE", "/v1/sys/audit/file", 204)
    assert cli("audit", "disable", "file")[1] == "Success! Disabled audit device (if it was enabled) at: file/\n"
