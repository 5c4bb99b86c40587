"""Reading Vault server config files (HCL or JSON) into a :class:`ServerConfig`.

Each file is parsed and validated on its own (so every error names its file), then the
files are merged in order: later files override scalars and the storage stanza, listeners
and seals accumulate. Only the named files are read; nothing is written or stat'ed beyond
them.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from hcl.parser import HclParser

from vaultraft.config.model import (
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_LEASE_TTL,
    DEFAULT_MAX_REQUEST_DURATION,
    DEFAULT_MAX_REQUEST_SIZE,
    ConfigError,
    ListenerConfig,
    ReplicationConfig,
    SealConfigBlock,
    ServerConfig,
    StorageConfig,
    join_host_port,
    split_host_port,
)
from vaultraft.framework import parse_duration, parse_duration_seconds

# Top-level keys Vault accepts that vaultraft tolerates without acting on them.
_IGNORED_TOP = frozenset(
    {
        "telemetry",
        "plugin_directory",
        "disable_cache",
        "enable_response_header_hostname",
        "enable_response_header_raft_node_id",
        "license_path",
    }
)
_IGNORED_LISTENER = frozenset(
    {"telemetry", "profiling", "unauthenticated_metrics_access", "custom_response_headers"}
)
_LOG_LEVELS = {"trace": "trace", "debug": "debug", "info": "info", "warn": "warn",
               "warning": "warn", "error": "error"}
_LOG_FORMATS = frozenset({"standard", "json"})
_TLS_VERSIONS = {"tls12": 12, "tls13": 13}
_OLD_TLS_VERSIONS = frozenset({"tls10", "tls11"})
_STORAGE_TYPES = frozenset({"raft", "inmem"})
_SEAL_TYPES = frozenset({"shamir", "pkcs11"})
_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})
_HCL_POS = re.compile(r"^Line (\d+), column \d+(?:, index \d+)?: (.*)$", re.DOTALL)


class _Fail(Exception):
    """Raised by value converters; the caller prefixes file and key."""


# --------------------------------------------------------------------------- value helpers


def _show(value: Any) -> str:
    """A short, quoted rendering of a config value for error messages."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace("\n", "\\n") + '"'
    if isinstance(value, dict):
        return "a block"
    if isinstance(value, list):
        return "a list"
    return json.dumps(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Fail(f"expected a boolean, got {_show(value)}")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        raise _Fail("expected a single string, got a list (is the key set twice?)")
    raise _Fail(f"expected a string, got {_show(value)}")


def _to_duration(value: Any) -> int:
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise _Fail(f"expected a duration such as \"768h\", got {_show(value)}")
    try:
        return parse_duration(value)
    except ValueError:
        raise _Fail(f"invalid duration {_show(value)} (use Go syntax such as \"768h\" or \"30m\")") from None


def _to_seconds(value: Any) -> float:
    """A duration that may be a fraction of a second ("500ms", "1.5s", 2)."""
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise _Fail(f"expected a duration such as \"500ms\" or \"5s\", got {_show(value)}")
    try:
        return parse_duration_seconds(value)
    except ValueError:
        raise _Fail(f"invalid duration {_show(value)} (use Go syntax such as \"500ms\" or \"5s\")") from None


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Fail(f"expected an integer, got {_show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value.strip())
    raise _Fail(f"expected an integer, got {_show(value)}")


def _choice(options: dict[str, str] | frozenset[str]) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        s = _to_str(value).strip().lower()
        if s not in options:
            allowed = ", ".join(sorted(set(options)))
            raise _Fail(f"{_show(value)} is not valid (use one of: {allowed})")
        return options[s] if isinstance(options, dict) else s

    return conv


def _raw_block(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        merged: dict[str, Any] = {}
        for v in value:
            merged.update(v)
        return merged
    raise _Fail(f"expected a block, got {_show(value)}")


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "api_addr": _to_str,
    "cluster_addr": _to_str,
    "cluster_name": _to_str,
    "pid_file": _to_str,
    "log_level": _choice(_LOG_LEVELS),
    "log_format": _choice(_LOG_FORMATS),
    "disable_mlock": _to_bool,
    "ui": _to_bool,
    "disable_performance_standby": _to_bool,
    "disable_clustering": _to_bool,
    "raw_storage_endpoint": _to_bool,
    "default_lease_ttl": _to_duration,
    "max_lease_ttl": _to_duration,
    "replication": _raw_block,
}


# --------------------------------------------------------------------------- HCL / JSON


class _KeepDuplicatesParser(HclParser):  # type: ignore[misc]
    """pyhcl merges repeated top-level blocks (two ``listener "tcp"`` become one); keep them
    as a list instead, as it already does inside blocks."""

    def objectlist_flat(self, lt: Any, replace: bool) -> Any:
        return super().objectlist_flat(lt, False)


@functools.lru_cache(maxsize=1)
def _hcl_parser() -> _KeepDuplicatesParser:
    return _KeepDuplicatesParser()


def _parse_text(name: str, text: str) -> dict[str, Any]:
    """The raw object of one file; HCL parse errors become one-line :class:`ConfigError`."""
    if text.lstrip().startswith("{"):
        try:
            obj: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: line {e.lineno}: JSON parse error: {e.msg}") from None
    else:
        try:
            obj = _hcl_parser().parse(text)
        except Exception as e:  # pyhcl raises bare ValueError (and worse) on bad input
            msg = " ".join(str(e).split())
            m = _HCL_POS.match(msg)
            if m:
                raise ConfigError(f"{name}: line {m.group(1)}: HCL parse error: {m.group(2)}") from None
            raise ConfigError(f"{name}: HCL parse error: {msg}") from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{name}: the top level must be an object of settings")
    return obj


def _labeled_blocks(name: str, key: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[(label, body), ...]`` from ``key "label" { body }`` in any HCL/JSON spelling."""
    out: list[tuple[str, dict[str, Any]]] = []
    bad = ConfigError(f'{name}: {key}: expected {key} "<type>" {{ ... }} blocks')
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise bad
            out.extend(_labeled_blocks(name, key, item))
        return out
    if not isinstance(value, dict):
        raise bad
    for label, body in value.items():
        if isinstance(body, dict):
            out.append((label, body))
        elif isinstance(body, list) and body and all(isinstance(b, dict) for b in body):
            out.extend((label, b) for b in body)
        else:
            raise bad
    return out


# --------------------------------------------------------------------------- stanzas


def _listener(name: str, where: str, ltype: str, body: dict[str, Any]) -> ListenerConfig:
    if ltype != "tcp":
        raise ConfigError(f'{name}: listener "{ltype}" is not supported (only "tcp" listeners are)')

    def get(key: str, conv: Callable[[Any], Any], default: Any) -> Any:
        if key not in body:
            return default
        try:
            return conv(body[key])
        except _Fail as e:
            raise ConfigError(f"{name}: {where}: {key}: {e}") from None

    known = {
        "address", "cluster_address", "replication_address", "tls_disable", "tls_cert_file", "tls_key_file",
        "tls_min_version", "tls_max_version", "tls_client_ca_file",
        "tls_require_and_verify_client_cert", "max_request_size", "max_request_duration",
    }
    for key in body:
        if key not in known and key not in _IGNORED_LISTENER:
            raise ConfigError(f'{name}: {where}: unknown key "{key}"')

    address = get("address", _to_str, "127.0.0.1:8200")
    try:
        host, port = split_host_port(address)
    except ValueError as e:
        raise ConfigError(f"{name}: {where}: address {_show(address)}: {e}") from None
    cluster_address = get("cluster_address", _to_str, None)
    if cluster_address is None:
        if port >= 65535:
            raise ConfigError(f"{name}: {where}: cluster_address must be set when the port is {port}")
        cluster_address = join_host_port(host, port + 1)
    else:
        try:
            split_host_port(cluster_address)
        except ValueError as e:
            raise ConfigError(f"{name}: {where}: cluster_address {_show(cluster_address)}: {e}") from None
    replication_address = get("replication_address", _to_str, None)
    if replication_address is None:
        c_host, c_port = split_host_port(cluster_address)
        replication_address = join_host_port(c_host, c_port + 1) if c_port and c_port < 65535 else ""
    else:
        try:
            split_host_port(replication_address)
        except ValueError as e:
            raise ConfigError(f"{name}: {where}: replication_address {_show(replication_address)}: {e}") from None

    def tls_version(key: str, default: str) -> str:
        raw: str = get(key, _to_str, default)
        v = raw.strip().lower()
        if v in _OLD_TLS_VERSIONS:
            raise ConfigError(f'{name}: {where}: {key} "{raw}" is not supported (use tls12 or tls13)')
        if v not in _TLS_VERSIONS:
            raise ConfigError(f'{name}: {where}: {key} "{raw}" is not a TLS version (use tls12 or tls13)')
        return v

    tls_min = tls_version("tls_min_version", "tls12")
    tls_max = tls_version("tls_max_version", "tls13")
    if _TLS_VERSIONS[tls_min] > _TLS_VERSIONS[tls_max]:
        raise ConfigError(f"{name}: {where}: tls_min_version {tls_min} is above tls_max_version {tls_max}")

    tls_disable = get("tls_disable", _to_bool, False)
    cert = get("tls_cert_file", _to_str, None) or None
    key_file = get("tls_key_file", _to_str, None) or None
    if not tls_disable:
        for k, v in (("tls_cert_file", cert), ("tls_key_file", key_file)):
            if v is None:
                raise ConfigError(
                    f"{name}: {where}: {k} is required when TLS is enabled (or set tls_disable = true)"
                )
    return ListenerConfig(
        type="tcp",
        address=address,
        cluster_address=cluster_address,
        replication_address=replication_address,
        tls_disable=tls_disable,
        tls_cert_file=cert,
        tls_key_file=key_file,
        tls_min_version=tls_min,
        tls_max_version=tls_max,
        tls_client_ca_file=get("tls_client_ca_file", _to_str, None) or None,
        tls_require_and_verify_client_cert=get("tls_require_and_verify_client_cert", _to_bool, False),
        max_request_size=get("max_request_size", _to_int, DEFAULT_MAX_REQUEST_SIZE),
        max_request_duration=get("max_request_duration", _to_duration, DEFAULT_MAX_REQUEST_DURATION),
    )


def _storage(name: str, key: str, stype: str, body: dict[str, Any]) -> StorageConfig:
    where = f'{key} "{stype}"'
    if stype not in _STORAGE_TYPES:
        raise ConfigError(f'{name}: {where} is not supported (use storage "raft" or storage "inmem")')
    if stype == "inmem":
        return StorageConfig(type="inmem", options=dict(body))
    options = dict(body)
    try:
        path = _to_str(options.pop("path")) if "path" in options else ""
        node_id = _to_str(options.pop("node_id")) if "node_id" in options else None
    except _Fail as e:
        raise ConfigError(f"{name}: {where}: {e}") from None
    if not path.strip():
        raise ConfigError(f"{name}: {where}: path is required (the directory raft stores its data in)")
    joins: list[dict[str, Any]] = []
    rj = options.pop("retry_join", [])
    for item in rj if isinstance(rj, list) else [rj]:
        if not isinstance(item, dict):
            raise ConfigError(f"{name}: {where}: retry_join must be a block of settings, got {_show(item)}")
        joins.append(dict(item))
    return StorageConfig(type="raft", path=path, node_id=node_id or None, retry_join=tuple(joins), options=options)


def _seal(name: str, stype: str, body: dict[str, Any]) -> SealConfigBlock:
    where = f'seal "{stype}"'
    if stype not in _SEAL_TYPES:
        raise ConfigError(f'{name}: {where} is not supported (use seal "shamir" or seal "pkcs11")')
    options: dict[str, str] = {}
    disabled = False
    for k, v in body.items():
        if k == "disabled":
            try:
                disabled = _to_bool(v)
            except _Fail as e:
                raise ConfigError(f"{name}: {where}: disabled: {e}") from None
        elif isinstance(v, bool):
            options[k] = "true" if v else "false"
        elif isinstance(v, (str, int, float)):
            options[k] = str(v)
        else:  # never echo the value: seal options may hold a PIN
            raise ConfigError(f"{name}: {where}: {k} must be a string")
    return SealConfigBlock(type=stype, options=options, disabled=disabled)


# --------------------------------------------------------------------------- files and merge


@dataclass
class _Partial:
    """What one or more files said, each value tagged with the file that said it."""

    scalars: dict[str, tuple[Any, str]] = field(default_factory=dict)
    listeners: list[ListenerConfig] = field(default_factory=list)
    storage: tuple[StorageConfig, str] | None = None
    seals: list[tuple[SealConfigBlock, str]] = field(default_factory=list)

    def merge(self, later: _Partial) -> None:
        self.scalars.update(later.scalars)
        self.listeners.extend(later.listeners)
        if later.storage is not None:
            self.storage = later.storage
        self.seals.extend(later.seals)


def _parse_file(name: str) -> _Partial:
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a UTF-8 text file") from None
    obj = _parse_text(name, text)

    part = _Partial()
    storage_keys = [k for k in ("storage", "backend") if k in obj]
    for key, value in obj.items():
        if key in _SCALARS:
            try:
                part.scalars[key] = (_SCALARS[key](value), name)
            except _Fail as e:
                raise ConfigError(f"{name}: {key}: {e}") from None
        elif key == "listener":
            blocks = _labeled_blocks(name, key, value)
            for i, (ltype, body) in enumerate(blocks):
                where = f'listener "{ltype}"' + (f" #{i + 1}" if len(blocks) > 1 else "")
                part.listeners.append(_listener(name, where, ltype, body))
        elif key in ("storage", "backend"):
            if len(storage_keys) > 1:
                raise ConfigError(
                    f"{name}: storage and backend: only one storage stanza is allowed "
                    "(backend is the legacy name of storage)"
                )
            blocks = _labeled_blocks(name, key, value)
            if len(blocks) > 1:
                raise ConfigError(f"{name}: {key}: only one storage stanza is allowed per file")
            if not blocks:
                raise ConfigError(f'{name}: {key}: expected {key} "raft" {{ ... }}')
            stype, body = blocks[0]
            part.storage = (_storage(name, key, stype, body), name)
        elif key in ("ha_storage", "ha_backend"):
            raise ConfigError(
                f"{name}: {key} is not supported (raft storage provides high availability itself)"
            )
        elif key == "seal":
            for stype, body in _labeled_blocks(name, key, value):
                part.seals.append((_seal(name, stype, body), name))
        elif key in _IGNORED_TOP:
            continue
        else:
            raise ConfigError(f'{name}: unknown key "{key}" (not a server setting vaultraft supports)')
    return part


_VAULT_REPLICATION_KEYS = frozenset({
    "resolver_discover_servers", "logshipper_buffer_length", "logshipper_buffer_size",
    "allow_forwarding_via_header", "best_effort_wal_wait_duration",
})


def _replication(tagged: tuple[dict[str, Any], str]) -> ReplicationConfig:
    """The typed ``replication {}`` stanza (one precise ConfigError line per fault)."""
    body, name = tagged
    convs: dict[str, Callable[[Any], Any]] = {
        "wal_retention_entries": _to_int, "wal_retention_age": _to_duration, "dr_sync": _to_bool,
        "dr_sync_timeout": _to_seconds, "auto_promote": _to_bool, "failover_timeout": _to_seconds,
        "witness_address": _to_str, "witness_tls_bundle": _to_str,
    }
    values: dict[str, Any] = {}
    vault: dict[str, Any] = {}
    for key, raw in body.items():
        if key in _VAULT_REPLICATION_KEYS:
            vault[key] = raw
            continue
        conv = convs.get(key)
        if conv is None:
            raise ConfigError(f'{name}: replication: unknown key "{key}"')
        try:
            values[key] = conv(raw)
        except _Fail as e:
            raise ConfigError(f"{name}: replication: {key}: {e}") from None
    cfg = ReplicationConfig(**values, vault_options=vault)
    if cfg.wal_retention_entries < 0 or cfg.wal_retention_age <= 0:
        raise ConfigError(f"{name}: replication: wal_retention_entries must be >= 0 and wal_retention_age > 0")
    if cfg.dr_sync_timeout <= 0:
        raise ConfigError(f"{name}: replication: dr_sync_timeout must be positive")
    if cfg.witness_address:
        try:
            split_host_port(cfg.witness_address)
        except ValueError as e:
            raise ConfigError(f"{name}: replication: witness_address {_show(cfg.witness_address)}: {e}") from None
    if cfg.auto_promote:
        if not cfg.witness_address or not cfg.witness_tls_bundle:
            raise ConfigError(f"{name}: replication: auto_promote needs witness_address and witness_tls_bundle")
        if cfg.failover_timeout < 3:
            raise ConfigError(f"{name}: replication: failover_timeout must be at least 3s with auto_promote")
    return cfg


def _expand(paths: list[str]) -> list[str]:
    """Files to read, in order; a directory stands for its ``*.hcl``/``*.json`` files, sorted."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            try:
                names = sorted(n for n in os.listdir(p) if n.endswith((".hcl", ".json")))
            except OSError as e:
                raise ConfigError(f"{p}: cannot read config directory: {e.strerror or e}") from None
            if not names:
                raise ConfigError(f"{p}: no .hcl or .json files in config directory")
            files.extend(os.path.join(p, n) for n in names)
        else:
            files.append(p)
    return files


def load_config(paths: list[str]) -> ServerConfig:
    """Parse, validate and merge the config files (or directories) ``paths`` in order.

    Later files override scalar settings and the storage stanza; listeners and seals
    accumulate. Raises :class:`ConfigError` whose one-line message names the file, the
    stanza or key, and the fault.
    """
    if not paths:
        raise ConfigError("no configuration file given (use -config=<file>)")
    files = _expand(paths)
    merged = _Partial()
    for name in files:
        merged.merge(_parse_file(name))
    label = ", ".join(files)

    if merged.storage is None:
        raise ConfigError(f'{label}: missing storage stanza (add storage "raft" {{ path = "..." }})')
    if not merged.listeners:
        raise ConfigError(f'{label}: missing listener stanza (add listener "tcp" {{ address = "..." }})')
    if len(merged.seals) > 2:
        raise ConfigError(f"{merged.seals[2][1]}: seal: at most two seal stanzas (one disabled, for migration)")
    enabled = [(s, f) for s, f in merged.seals if not s.disabled]
    if len(enabled) > 1:
        raise ConfigError(
            f'{enabled[1][1]}: seal "{enabled[1][0].type}": only one seal may be enabled '
            '(mark the one being migrated from with disabled = "true")'
        )

    def scalar(key: str, default: Any) -> Any:
        return merged.scalars[key][0] if key in merged.scalars else default

    default_ttl = scalar("default_lease_ttl", DEFAULT_LEASE_TTL)
    max_ttl = scalar("max_lease_ttl", DEFAULT_MAX_LEASE_TTL)
    if default_ttl > max_ttl:
        src = merged.scalars.get("default_lease_ttl", merged.scalars.get("max_lease_ttl", (None, label)))[1]
        raise ConfigError(f"{src}: default_lease_ttl ({default_ttl}s) is larger than max_lease_ttl ({max_ttl}s)")

    return ServerConfig(
        listeners=tuple(merged.listeners),
        storage=merged.storage[0],
        seals=tuple(s for s, _ in merged.seals),
        api_addr=scalar("api_addr", None),
        cluster_addr=scalar("cluster_addr", None),
        cluster_name=scalar("cluster_name", None),
        log_level=scalar("log_level", "info"),
        log_format=scalar("log_format", "standard"),
        disable_mlock=scalar("disable_mlock", False),
        ui=scalar("ui", False),
        default_lease_ttl=default_ttl,
        max_lease_ttl=max_ttl,
        pid_file=scalar("pid_file", None),
        disable_performance_standby=scalar("disable_performance_standby", False),
        disable_clustering=scalar("disable_clustering", False),
        raw_storage_endpoint=scalar("raw_storage_endpoint", False),
        replication=_replication(merged.scalars.get("replication", ({}, label))),
        files=tuple(files),
    )


def dev_config(listen_address: str = "127.0.0.1:8200") -> ServerConfig:
    """The configuration of ``server -dev``: one plain-HTTP listener, in-memory storage, UI on."""
    try:
        host, port = split_host_port(listen_address)
    except ValueError as e:
        raise ConfigError(f"-dev-listen-address {_show(listen_address)}: {e}") from None
    listener = ListenerConfig(
        address=listen_address,
        cluster_address=join_host_port(host, port + 1 if port < 65535 else 0),
        tls_disable=True,
    )
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return ServerConfig(
        listeners=(listener,),
        storage=StorageConfig(type="inmem"),
        api_addr="http://" + join_host_port(shown, port),
        disable_mlock=True,
        ui=True,
        dev=True,
    )
