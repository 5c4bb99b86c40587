"""Audit broker and file device: entries on disk, HMACs, options and failure semantics."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from vaultraft.audit import AuditBroker, AuditFailed, AuthInfo, Salt, hash_structure
from vaultraft.logical.errors import InternalError, InvalidRequest
from vaultraft.logical.request import Auth, Operation, Request, Response, TokenInfo

TOKEN = "hvs.CAESIsupersecrettoken"
ACCESSOR = "accessor-abc123"
PASSWORD = "hunter2-password"
OUT_SECRET = "s3cret-read-back"
NEW_TOKEN = "hvs.NEWLYISSUEDTOKEN"


def make_request(op: Operation = Operation.UPDATE) -> Request:
    return Request(
        operation=op,
        path="secret/data/app",
        data={"data": {"password": PASSWORD, "tags": ["blue", "green"]}, "options": {"cas": 3}, "flag": True},
        client_token=TOKEN,
        mount_point="secret/",
        mount_type="kv",
        request_id="req-0001",
        remote_addr="10.1.2.3",
        token=TokenInfo(accessor=ACCESSOR, policies=("default", "app")),
    )


AUTH = AuthInfo(
    client_token=TOKEN,
    accessor=ACCESSOR,
    display_name="token-app",
    policies=("app", "default"),
    token_policies=("app", "default"),
    metadata={"team": "platform"},
    entity_id="ent-1",
    token_type="service",
    token_ttl=3600,
)


def make_response() -> Response:
    return Response(
        data={"data": {"password": OUT_SECRET}, "metadata": {"version": 4}},
        auth=Auth(
            client_token=NEW_TOKEN,
            accessor="new-accessor",
            policies=["default"],
            token_policies=["default"],
            metadata=None,
            lease_duration=600,
            renewable=True,
        ),
        warnings=["a warning"],
    )


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def enable(broker: AuditBroker, path: str, file_path: str | Path, **options: Any) -> None:
    broker.enable(path, "file", {"file_path": str(file_path), **options}, "test device", Salt.generate().key, False)


async def test_request_and_response_lines_are_hmaced(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    broker = AuditBroker()
    enable(broker, "file", log)
    req = make_request()
    await broker.log_request(req, AUTH, None)
    await broker.log_response(req, make_response(), AUTH, None)

    text = log.read_text()
    for secret in (TOKEN, ACCESSOR, PASSWORD, OUT_SECRET, NEW_TOKEN, "new-accessor", "blue"):
        assert secret not in text
    lines = read_lines(log)
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)

    assert first["type"] == "request" and second["type"] == "response"
    assert first["time"].endswith("Z")
    r = first["request"]
    assert r["id"] == "req-0001" and r["operation"] == "update" and r["path"] == "secret/data/app"
    assert r["mount_type"] == "kv" and r["mount_point"] == "secret/"
    assert r["namespace"] == {"id": "root"} and r["remote_address"] == "10.1.2.3"
    assert r["client_token"] == broker.hash("file", TOKEN)
    assert r["client_token_accessor"] == broker.hash("file/", ACCESSOR)
    assert r["data"]["data"]["password"] == broker.hash("file", PASSWORD)
    assert r["data"]["data"]["tags"] == [broker.hash("file", "blue"), broker.hash("file", "green")]
    assert r["data"]["options"] == {"cas": 3} and r["data"]["flag"] is True

    a = first["auth"]
    assert a["client_token"] == broker.hash("file", TOKEN) and a["accessor"] == broker.hash("file", ACCESSOR)
    assert a["display_name"] == "token-app" and a["policies"] == ["app", "default"]
    assert a["metadata"] == {"team": "platform"} and a["token_type"] == "service" and a["token_ttl"] == 3600

    resp = second["response"]
    assert resp["data"]["data"]["password"] == broker.hash("file", OUT_SECRET)
    assert resp["data"]["metadata"] == {"version": 4}
    assert resp["auth"]["client_token"] == broker.hash("file", NEW_TOKEN)
    assert resp["auth"]["accessor"] == broker.hash("file", "new-accessor")
    assert resp["auth"]["token_ttl"] == 600
    assert resp["warnings"] == ["a warning"] and resp["mount_type"] == "kv"
    assert second["request"]["client_token"] == r["client_token"]
    assert all(v.startswith("hmac-sha256:") for v in (r["client_token"], a["accessor"]))


async def test_error_and_unauthenticated_request(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    broker = AuditBroker()
    enable(broker, "file", log)
    req = Request(operation=Operation.READ, path="sys/health")
    await broker.log_request(req, None, "permission denied")
    entry = json.loads(read_lines(log)[0])
    assert entry["error"] == "permission denied"
    assert entry["auth"] == {"token_type": "default"}
    assert "client_token" not in entry["request"] and "data" not in entry["request"]


async def test_audit_hash_matches_salt_hmac() -> None:
    salt = Salt.generate()
    expected = "hmac-sha256:" + hmac.new(salt.key, b"value", hashlib.sha256).hexdigest()
    assert salt.hmac("value") == expected
    assert salt.key.hex() not in repr(salt)
    broker = AuditBroker()
    broker.enable("dev/null", "file", {"file_path": "discard"}, "", salt.key, False)
    assert broker.hash("dev/null/", "value") == expected
    with pytest.raises(InvalidRequest, match='unknown audit backend "nope/"'):
        broker.hash("nope", "value")


async def test_log_raw_and_hmac_accessor(tmp_path: Path) -> None:
    raw_log, acc_log = tmp_path / "raw.log", tmp_path / "acc.log"
    broker = AuditBroker()
    enable(broker, "raw", raw_log, log_raw="true")
    enable(broker, "acc", acc_log, hmac_accessor=False)
    await broker.log_request(make_request(), AUTH, None)

    raw = json.loads(read_lines(raw_log)[0])
    assert raw["request"]["client_token"] == TOKEN
    assert raw["request"]["data"]["data"]["password"] == PASSWORD
    assert raw["auth"]["accessor"] == ACCESSOR

    acc = json.loads(read_lines(acc_log)[0])
    assert acc["auth"]["accessor"] == ACCESSOR and acc["request"]["client_token_accessor"] == ACCESSOR
    assert acc["request"]["client_token"] == broker.hash("acc", TOKEN)
    assert acc["request"]["data"]["data"]["password"] == broker.hash("acc", PASSWORD)


async def test_prefix_and_mode(tmp_path: Path) -> None:
    log = tmp_path / "prefixed.log"
    broker = AuditBroker()
    enable(broker, "file", log, prefix="@cee: ", mode="0640")
    await broker.log_request(make_request(), AUTH, None)
    line = read_lines(log)[0]
    assert line.startswith('@cee: {"time":')
    assert json.loads(line[len("@cee: "):])["type"] == "request"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o640

    default = tmp_path / "default.log"
    enable(broker, "other", default)
    assert stat.S_IMODE(os.stat(default).st_mode) == 0o600


async def test_non_hmac_keys_and_list_elision(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    broker = AuditBroker()
    enable(broker, "file", log, elide_list_responses="true")
    req = make_request(Operation.LIST)
    resp = Response(data={"keys": ["a", "b", "c"], "key_info": {"a": {}}, "note": "x"})
    await broker.log_response(req, resp, AUTH, None, non_hmac_request_keys=["password"])
    entry = json.loads(read_lines(log)[0])
    assert entry["request"]["data"]["data"]["password"] == PASSWORD
    assert entry["request"]["data"]["data"]["tags"][0].startswith("hmac-sha256:")
    assert entry["response"]["data"] == {"keys": 3, "key_info": 1, "note": broker.hash("file", "x")}


def test_hash_structure_walks_and_copies() -> None:
    salt = Salt(b"k" * 32)
    obj: dict[str, Any] = {"a": "x", "n": 1, "f": 1.5, "b": False, "z": None, "l": ["y", {"q": "w"}], "keep": ["p"]}
    out = hash_structure(obj, salt, non_hmac_keys=("keep",))
    assert out == {
        "a": salt.hmac("x"),
        "n": 1,
        "f": 1.5,
        "b": False,
        "z": None,
        "l": [salt.hmac("y"), {"q": salt.hmac("w")}],
        "keep": ["p"],
    }
    assert obj["a"] == "x" and obj["l"][1]["q"] == "w"


def test_enable_validation(tmp_path: Path) -> None:
    broker = AuditBroker()
    key = Salt.generate().key
    enable(broker, "file", tmp_path / "a.log")
    with pytest.raises(InvalidRequest, match="path already in use"):
        enable(broker, "file/", tmp_path / "b.log")
    with pytest.raises(InvalidRequest, match="path already in use"):
        enable(broker, "file/nested", tmp_path / "b.log")
    with pytest.raises(InvalidRequest, match='unknown audit backend type: "syslog"'):
        broker.enable("sys", "syslog", {}, "", key, False)
    with pytest.raises(InvalidRequest, match='"file_path" is required'):
        broker.enable("x", "file", {}, "", key, False)
    with pytest.raises(InvalidRequest, match="jsonx is not supported"):
        enable(broker, "x", tmp_path / "x.log", format="jsonx")
    with pytest.raises(InvalidRequest, match="log_raw"):
        enable(broker, "x", tmp_path / "x.log", log_raw="perhaps")
    with pytest.raises(InvalidRequest, match="executable"):
        enable(broker, "x", tmp_path / "x.log", mode="0755")
    with pytest.raises(InvalidRequest, match="backend path must be specified"):
        enable(broker, "/", tmp_path / "x.log")
    with pytest.raises(InvalidRequest, match="audit backend failed test message"):
        enable(broker, "x", tmp_path / "no-such-dir" / "x.log")
    assert list(broker.list()) == ["file/"]


def test_list_and_disable(tmp_path: Path) -> None:
    broker = AuditBroker()
    broker.enable("file", "file", {"file_path": str(tmp_path / "a.log"), "log_raw": False}, "my log", Salt.generate().key, True)
    assert broker.list() == {
        "file/": {
            "type": "file",
            "description": "my log",
            "options": {"file_path": str(tmp_path / "a.log"), "log_raw": "false"},
            "local": True,
            "path": "file/",
        }
    }
    assert broker.disable("file") is True
    assert broker.disable("file") is False
    assert broker.list() == {}


async def test_no_devices_is_a_no_op() -> None:
    broker = AuditBroker()
    await broker.log_request(make_request(), AUTH, None)
    await broker.log_response(make_request(), None, AUTH, None)


async def test_only_device_unwritable_fails_the_request(tmp_path: Path) -> None:
    sub = tmp_path / "logs"
    sub.mkdir()
    broker = AuditBroker()
    enable(broker, "file", sub / "audit.log")
    await broker.log_request(make_request(), AUTH, None)
    shutil.rmtree(sub)  # the directory vanished: reopening (SIGHUP) and writing now fail
    failures = broker.reload()
    assert len(failures) == 1 and "file/" in failures[0] and "No such file or directory" in failures[0]
    with pytest.raises(AuditFailed) as e:
        await broker.log_request(make_request(), AUTH, None)
    assert isinstance(e.value, InternalError)
    assert str(e.value) == "no audit backend succeeded in logging the request"
    with pytest.raises(AuditFailed, match="logging the response"):
        await broker.log_response(make_request(), make_response(), AUTH, None)


async def test_skip_test_device_fails_on_write(tmp_path: Path) -> None:
    broker = AuditBroker()
    enable(broker, "file", tmp_path / "missing" / "audit.log", skip_test="true")
    with pytest.raises(AuditFailed):
        await broker.log_request(make_request(), AUTH, None)


async def test_one_working_device_is_enough(tmp_path: Path) -> None:
    sub = tmp_path / "logs"
    sub.mkdir()
    good = tmp_path / "good.log"
    broker = AuditBroker()
    enable(broker, "broken", sub / "audit.log")
    enable(broker, "good", good)
    shutil.rmtree(sub)
    broker.reload()
    await broker.log_request(make_request(), AUTH, None)
    await broker.log_response(make_request(), make_response(), AUTH, None)
    assert [json.loads(line)["type"] for line in read_lines(good)] == ["request", "response"]


async def test_reload_follows_log_rotation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    broker = AuditBroker()
    enable(broker, "file", log)
    await broker.log_request(make_request(), AUTH, None)
    rotated = tmp_path / "audit.log.1"
    log.rename(rotated)
    await broker.log_request(make_request(), AUTH, None)  # still the old (renamed) file
    assert broker.reload() == []
    await broker.log_request(make_request(), AUTH, None)
    assert len(read_lines(rotated)) == 2 and len(read_lines(log)) == 1
