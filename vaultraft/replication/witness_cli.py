"""``vaultraft witness``: run the fencing witness, or issue client bundles for cluster nodes.

    vaultraft witness -data-dir D [-listen 127.0.0.1:8300] [-max-lease 60]
                      [-log-level info] [-log-format standard|json]
    vaultraft witness issue -data-dir D -name NAME -out FILE

Bad arguments print one line and exit 2; runtime failures (data dir, lock, port) print one
line and exit 1. The server runs until SIGTERM or SIGINT and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import ipaddress
import math
import os
import signal
import sys
from typing import NoReturn, TextIO

import structlog

from vaultraft.hardening import harden_process
from vaultraft.logging import configure_logging
from vaultraft.raft.tls import PKIError
from vaultraft.replication.fence import MAX_DURATION, LeaseVoter
from vaultraft.replication.witness import (
    STATE_FILE,
    WitnessServer,
    issue_client_bundle,
    load_or_create_ca,
    prepare_data_dir,
    server_cert,
    valid_client_name,
    write_bundle,
)

log = structlog.get_logger("vaultraft.replication.witness")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_HELP = frozenset({"-h", "-help", "--help"})
USAGE = ("Usage: vaultraft witness -data-dir DIR [-listen IP:PORT] [-max-lease SECONDS] "
         "[-log-level LEVEL] [-log-format standard|json]\n"
         "       vaultraft witness issue -data-dir DIR -name NAME -out FILE\n")


class UsageError(Exception):
    """A bad command line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser(prog: str) -> _Parser:
    return _Parser(prog=prog, add_help=False, allow_abbrev=False)


def parse_listen(value: str) -> tuple[str, int]:
    """``IP:PORT`` (``[v6]:PORT`` too; port 0 picks a free port); UsageError otherwise."""
    host, sep, port_s = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"-listen must be IP:PORT, got {value[:100]!r}") from None
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise UsageError(f"-listen must be IP:PORT with a port below 65536, got {value[:100]!r}")
    return host, int(port_s)


def run_witness_cli(argv: list[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Entry point of ``vaultraft witness ...``; returns the exit code, never raises."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if argv and argv[0] in _HELP:
        out.write(USAGE)
        return EXIT_OK
    try:
        if argv and argv[0] == "issue":
            return _issue(argv[1:], out, err)
        return _serve(argv, err)
    except UsageError as e:
        err.write(f"Error: {e}\n")
        return EXIT_USAGE


def _issue(argv: list[str], out: TextIO, err: TextIO) -> int:
    p = _parser("vaultraft witness issue")
    p.add_argument("-data-dir", "--data-dir", dest="data_dir", required=True)
    p.add_argument("-name", "--name", required=True)
    p.add_argument("-out", "--out", required=True)
    args = p.parse_args(argv)
    if not valid_client_name(args.name):
        raise UsageError(f"-name must be 1-64 of A-Z a-z 0-9 . _ : @ - and not the witness's own name, "
                         f"got {args.name[:80]!r}")
    configure_logging("info")  # to stderr: stdout carries only the result line
    if os.path.lexists(args.out):
        err.write(f"Error: {args.out} already exists\n")
        return EXIT_FAILED
    try:
        prepare_data_dir(args.data_dir)
        ca = load_or_create_ca(args.data_dir)
        write_bundle(args.out, issue_client_bundle(ca, args.name))
    except (OSError, ValueError) as e:
        err.write(f"Error: {_reason(e)}\n")
        return EXIT_FAILED
    out.write(f"Wrote a witness client bundle for {args.name} to {args.out}\n")
    return EXIT_OK


def _serve(argv: list[str], err: TextIO) -> int:
    p = _parser("vaultraft witness")
    p.add_argument("-data-dir", "--data-dir", dest="data_dir", required=True)
    p.add_argument("-listen", "--listen", default="127.0.0.1:8300")
    p.add_argument("-max-lease", "--max-lease", dest="max_lease", default="60")
    p.add_argument("-log-level", "--log-level", dest="log_level", default="info",
                   choices=["trace", "debug", "info", "warn", "warning", "error"])
    p.add_argument("-log-format", "--log-format", dest="log_format", default="standard",
                   choices=["standard", "json"])
    args = p.parse_args(argv)
    host, port = parse_listen(args.listen)
    try:
        max_lease = float(args.max_lease)
    except ValueError:
        max_lease = math.nan
    if not (math.isfinite(max_lease) and 0 < max_lease <= MAX_DURATION):
        raise UsageError(f"-max-lease must be seconds in (0, {MAX_DURATION:g}], got {args.max_lease[:40]!r}")

    configure_logging(args.log_level, args.log_format)
    harden_process(disable_mlock=True)  # no core dumps or ptrace of a process holding the CA key
    try:
        prepare_data_dir(args.data_dir)
        lock_fd = _lock(args.data_dir)
    except (OSError, ValueError) as e:
        err.write(f"Error: {_reason(e)}\n")
        return EXIT_FAILED
    try:
        ca = load_or_create_ca(args.data_dir)
        voter = LeaseVoter(os.path.join(args.data_dir, STATE_FILE), max_lease=max_lease)
        cert = server_cert(ca, host)
    except (OSError, ValueError, PKIError) as e:  # FenceStateError is a ValueError
        err.write(f"Error: {_reason(e)}\n")
        os.close(lock_fd)
        return EXIT_FAILED
    try:
        return asyncio.run(_run(WitnessServer(voter, cert, host, port), voter))
    except OSError as e:
        err.write(f"Error: cannot listen on {args.listen}: {e.strerror or e}\n")
        return EXIT_FAILED
    finally:
        os.close(lock_fd)


async def _run(server: WitnessServer, voter: LeaseVoter) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    status = voter.status()
    log.info("witness_started", address=server.bound_address, max_lease=status["max_lease"],
             epoch=status["epoch"], quarantine=status["quarantine_remaining"])
    try:
        await stop.wait()
    finally:
        await server.aclose()
        log.info("witness_stopped")
    return EXIT_OK


def _lock(data_dir: str) -> int:
    """Hold an exclusive lock on ``data_dir/lock`` for the process's life: two witnesses on one
    data dir would be two voters sharing one epoch, each forgetting the other's grants."""
    fd = os.open(os.path.join(data_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another witness is running on {data_dir}") from None
    return fd


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)[:300] or type(e).__name__
