"""Wire one node: config → storage → barrier → core → http, and run it until a signal."""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import signal
import ssl
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Coroutine
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from vaultraft.config import ConfigError, ServerConfig, dev_config, load_config
from vaultraft.config.model import ListenerConfig, join_host_port, split_host_port
from vaultraft.core import Core, CoreSettings, raft_ops
from vaultraft.core.mounts import new_entry
from vaultraft.core.raft_join import retry_until
from vaultraft.core.seal_lifecycle import build_seal_manager
from vaultraft.hardening import harden_process
from vaultraft.http import ApiServer
from vaultraft.logging import configure_logging
from vaultraft.logical import VaultError
from vaultraft.raft.layout import raft_dir
from vaultraft.raft.node import RaftPhysical
from vaultraft.raft.rebuild import rebuild_from_local_log
from vaultraft.storage import Physical
from vaultraft.storage.lmdb_replica import WalRetention
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.local import LocalPhysical

log = structlog.get_logger("vaultraft.server")


@dataclass(frozen=True)
class DevOptions:
    """``server -dev`` flags."""

    root_token_id: str | None
    listen_address: str


def tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """The listener's server TLS context (TLS 1.2 minimum), or None when TLS is disabled."""
    if listener.tls_disable:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}
    ctx.minimum_version = versions.get(listener.tls_min_version, ssl.TLSVersion.TLSv1_2)
    ctx.maximum_version = versions.get(listener.tls_max_version, ssl.TLSVersion.TLSv1_3)
    assert listener.tls_cert_file and listener.tls_key_file  # validated by config
    ctx.load_cert_chain(listener.tls_cert_file, listener.tls_key_file)
    if listener.tls_client_ca_file:
        ctx.load_verify_locations(listener.tls_client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if listener.tls_require_and_verify_client_cert:
        if not listener.tls_client_ca_file:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _truthy(value: object) -> bool:
    """A config boolean as Vault reads them (true/false, 1/0, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "t", "true", "y", "yes", "on")


def write_pid_file(path: str | None) -> None:
    """Write this process's PID to ``pid_file`` (as Vault), mode 0644."""
    if path:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")


async def retry_join(core: Core, config: ServerConfig, stop: asyncio.Event) -> None:
    """``retry_join`` blocks: until this node is initialized, try each leader in turn.

    A successful attempt only fetches the join challenge; the operator's unseal keys
    finish the join (as Vault's retry_join with a Shamir seal).
    """
    addrs = [str(b.get("leader_api_addr")) for b in config.storage.retry_join if b.get("leader_api_addr")]
    if not addrs:
        return

    async def attempt() -> bool:
        if await core.initialized():
            return True
        for addr in addrs:
            try:
                await raft_ops.join(core, addr)
                log.info("raft_retry_join_challenge_received", leader=addr)
                return True
            except VaultError as e:
                log.info("raft_retry_join_attempt_failed", leader=addr, error=str(e))
        return False

    await retry_until(attempt, stop=stop)


async def start_dev(core: Core, opts: DevOptions) -> tuple[str, str]:
    """Initialize with one share, unseal, mount kv-v2 at secret/; (unseal_key_b64, root_token)."""
    result = await core.initialize(1, 1, root_token_id=opts.root_token_id)
    key = base64.b64encode(result.keys[0]).decode()
    await core.unseal(key)
    if not await core.wait_active(15.0):
        raise RuntimeError("dev node did not become active")
    u = core.unsealed
    entry = new_entry("secret/", "kv", description="key/value secret storage", options={"version": "2"})
    core.mount_backend(entry)
    u.mounts.update(entry)
    await u.mounts.save()
    return key, result.root_token


def reload_audit(core: Core) -> None:
    """SIGHUP: reopen audit files (log rotation); log each device that failed."""
    for failure in core.audit.reload():
        log.error("audit_reload_failed", detail=failure)
    log.info("audit_reloaded")


def dev_banner(address: str, key: str, token: str) -> str:
    """Vault's dev-mode banner (printed to the user's terminal at their request)."""
    return (
        "WARNING! dev mode is enabled! In this mode, Vault runs entirely in-memory\n"
        "and starts unsealed with a single unseal key. The root token is already\n"
        "authenticated to the CLI, so you can immediately begin using Vault.\n\n"
        "You may need to set the following environment variables:\n\n"
        f"    $ export VAULT_ADDR='http://{address}'\n\n"
        "The unseal key and root token are displayed below in case you want to\n"
        "seal/unseal the Vault or re-authenticate.\n\n"
        f"Unseal Key: {key}\n"
        f"Root Token: {token}\n\n"
        "Development mode should NOT be used in production installations!\n"
    )


def node_id_for(config: ServerConfig) -> str:
    """The configured node_id, else one generated once and kept in ``<path>/node-id``."""
    st = config.storage
    if st.node_id:
        return st.node_id
    assert st.path
    path = os.path.join(st.path, "node-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        os.makedirs(st.path, mode=0o700, exist_ok=True)
        node_id = str(uuid.uuid4())
        with open(path, "w") as f:
            f.write(node_id)
        return node_id


def cluster_self_addr(config: ServerConfig, listener: ListenerConfig) -> str:
    """host:port peers use to reach this node's Raft port (from cluster_addr if set)."""
    if config.cluster_addr:
        return urlsplit(config.cluster_addr).netloc or config.cluster_addr
    return listener.cluster_address


def replication_advertise(config: ServerConfig, listener: ListenerConfig) -> str:
    """host:port secondaries dial: the advertised cluster host with the replication port."""
    if not listener.replication_address:
        return ""
    host, _ = split_host_port(cluster_self_addr(config, listener))
    _, port = split_host_port(listener.replication_address)
    return join_host_port(host, port)


async def open_physical(config: ServerConfig) -> Physical:
    """LMDB under Raft for ``storage "raft"``; memory for ``storage "inmem"``."""
    st = config.storage
    if st.type == "raft":
        assert st.path
        os.makedirs(st.path, mode=0o700, exist_ok=True)
        rep = config.replication
        retention = WalRetention(entries=rep.wal_retention_entries, age_ms=rep.wal_retention_age * 1000)
        # no fsync per commit: the Raft journal and snapshots rebuild it after an OS crash
        store = await asyncio.to_thread(LMDBStore, os.path.join(st.path, "vault.db"), wal_retention=retention,
                                        metasync=False, rebuildable=True)
        if store.rebuilt:  # set aside after an OS crash: refill it before anything reads it
            await asyncio.to_thread(rebuild_from_local_log, store, raft_dir(st.path))
        return RaftPhysical(store, data_dir=st.path, node_id=node_id_for(config),
                            self_addr=cluster_self_addr(config, config.listeners[0]),
                            bind_addr=config.listeners[0].cluster_address)
    return await LocalPhysical.open(st.type, st.path)


async def serve(config: ServerConfig, dev: DevOptions | None) -> int:
    """Run the node until SIGINT/SIGTERM; returns the exit status.

    Raises ConfigError for a seal stanza that cannot be used (before anything is written).
    """
    harden_process(disable_mlock=config.disable_mlock)
    st = config.storage
    physical = await open_physical(config)
    listener = config.listeners[0]
    api_addr = config.api_addr or f"{listener.scheme}://{listener.address}"
    core = Core(physical, CoreSettings(
        cluster_name=config.cluster_name or "",
        default_lease_ttl=config.default_lease_ttl,
        max_lease_ttl=config.max_lease_ttl,
        api_addr=api_addr,
        cluster_addr=config.cluster_addr or f"https://{listener.cluster_address}",
        performance_standby=_truthy(st.options.get("performance_standby", False)),
        replication_addr=replication_advertise(config, listener) if st.type == "raft" else "",
        replication_bind=listener.replication_address if st.type == "raft" else "",
        dr_sync=config.replication.dr_sync,
        dr_sync_timeout=float(config.replication.dr_sync_timeout),
        auto_promote=config.replication.auto_promote,
        failover_timeout=float(config.replication.failover_timeout),
        witness_address=config.replication.witness_address,
        witness_tls_bundle=config.replication.witness_tls_bundle,
    ))
    if dev is None:
        try:
            core.seals = build_seal_manager(core.barrier, config.seal, config.migration_seal)
        except BaseException:
            await physical.close()
            raise
    write_pid_file(config.pid_file)
    api = ApiServer(core, max_request_size=listener.max_request_size)
    runner = web.ServerRunner(api.server(), handle_signals=False)
    stop_join = asyncio.Event()
    await runner.setup()
    api.start()
    try:
        for lst in config.listeners:
            site = web.TCPSite(runner, lst.host or "0.0.0.0", lst.port, ssl_context=tls_context(lst),
                               reuse_address=True)
            await site.start()
            log.info("listener_started", address=lst.address, tls=not lst.tls_disable)
        if dev is not None:
            key, token = await start_dev(core, dev)
            sys.stdout.write(dev_banner(dev.listen_address, key, token))
            sys.stdout.flush()
        else:
            core.seals.start_auto_unseal(lambda: core.unseal(None))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_audit(core))
        # Everything loaded at startup (modules, config, listeners) lives as long as the
        # process: keep full collections from walking it again and again.
        gc.freeze()
        log.info("server_started", storage=st.type, api_addr=api_addr)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(retry_join(core, config, stop_join), name="retry_join")
            await stop.wait()
            stop_join.set()
        log.info("server_stopping")
    finally:
        stop_join.set()
        await runner.cleanup()
        await api.close()
        if not core.sealed:
            await core.seal()
        await core.seals.shutdown()
        await physical.close()
    return 0


#: Net allocations of GC-tracked objects between two young-generation collections
#: (CPython's default is 700). See _tune_gc.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Collect cyclic garbage less often than CPython's defaults.

    Under load the active node's in-flight requests alone keep hundreds of young objects
    alive, so with the default threshold it ran a young collection every ~25 ms (0.5 ms each)
    and a full one every ~3 s (30–40 ms, during which neither the event loop nor the Raft
    thread runs), collecting almost nothing: ~3 % of its CPU at 1,000 writes/s. Requests
    free their objects by reference counting; the rare cycles wait a little longer.
    """
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the server's coroutine to completion on uvloop (libuv transports: less CPU per
    request than asyncio's selector loop), or on asyncio's own loop when
    VAULTRAFT_EVENT_LOOP=asyncio (an escape hatch, and the baseline for A/B measurements)."""
    _tune_gc()
    if os.environ.get("VAULTRAFT_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_server_cli(argv: list[str]) -> int:
    """``vaultraft server`` entry point: Vault's flags, exit 1 with one line on a bad config."""
    p = argparse.ArgumentParser(prog="vaultraft server", prefix_chars="-")
    p.add_argument("-config", "--config", action="append", default=[])
    p.add_argument("-dev", "--dev", action="store_true")
    p.add_argument("-dev-root-token-id", "--dev-root-token-id", default=None)
    p.add_argument("-dev-listen-address", "--dev-listen-address", default="127.0.0.1:8200")
    p.add_argument("-log-level", "--log-level", default=None)
    p.add_argument("-log-format", "--log-format", default=None)
    args = p.parse_args(argv)
    try:
        if args.dev:
            config = dev_config(args.dev_listen_address)
        elif args.config:
            config = load_config(args.config)
        else:
            sys.stderr.write("Error: no configuration files found: use -config FILE or -dev\n")
            return 1
    except ConfigError as e:
        sys.stderr.write(f"Error loading configuration: {e}\n")
        return 1
    configure_logging(args.log_level or os.environ.get("VAULT_LOG_LEVEL") or config.log_level,
                      args.log_format or os.environ.get("VAULT_LOG_FORMAT") or config.log_format)
    dev = DevOptions(args.dev_root_token_id, args.dev_listen_address) if args.dev else None
    try:
        return _run_loop(serve(config, dev))
    except ConfigError as e:
        sys.stderr.write(f"Error loading configuration: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"Error starting server: {e.strerror or e}\n")
        return 1
