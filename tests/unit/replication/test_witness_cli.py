"""``vaultraft witness``: argument errors (one line, exit 2), ``issue``, and the real process
started as a subprocess: serve, answer over TLS, refuse a second instance, keep its epoch
across a restart, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from vaultraft.cli.base import Context
from vaultraft.cli.main import run
from vaultraft.raft.tls import NodeCert
from vaultraft.replication import witness_cli
from vaultraft.replication.witness import WitnessClient
from vaultraft.replication.witness_cli import run_witness_cli

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "vaultraft.cli.main", "witness"]


@pytest.fixture(autouse=True)
def no_process_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not reconfigure structlog or harden the pytest process."""
    monkeypatch.setattr(witness_cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(witness_cli, "harden_process", lambda **k: None)


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_witness_cli(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("argv", "needle"), [
    ([], "-data-dir"),
    (["-listen", "127.0.0.1:8300"], "-data-dir"),
    (["-data-dir", "D", "-listen", "localhost:8300"], "-listen must be IP:PORT"),
    (["-data-dir", "D", "-listen", "127.0.0.1"], "-listen must be IP:PORT"),
    (["-data-dir", "D", "-listen", "127.0.0.1:70000"], "below 65536"),
    (["-data-dir", "D", "-max-lease", "0"], "-max-lease"),
    (["-data-dir", "D", "-max-lease", "nan"], "-max-lease"),
    (["-data-dir", "D", "-max-lease", "ten"], "-max-lease"),
    (["-data-dir", "D", "-log-format", "xml"], "-log-format"),
    (["-data-dir", "D", "-bogus"], "unrecognized arguments: -bogus"),
    (["-data-dir", "D", "extra"], "unrecognized arguments: extra"),
    (["issue", "-data-dir", "D", "-out", "F"], "-name"),
    (["issue", "-data-dir", "D", "-name", "bad name", "-out", "F"], "-name must be"),
    (["issue", "-data-dir", "D", "-name", "vaultraft-witness", "-out", "F"], "-name must be"),
])
def test_bad_arguments_print_one_line_and_exit_2(tmp_path: Path, argv: list[str], needle: str) -> None:
    code, out, err = cli([a.replace("D", str(tmp_path / "d")) for a in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and needle in err
    assert not (tmp_path / "d").exists()  # nothing was created


def test_help() -> None:
    code, out, _ = cli(["-help"])
    assert code == 0 and "vaultraft witness issue" in out


def test_dispatched_from_the_vaultraft_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    err = io.StringIO()
    ctx = Context(stdin=io.StringIO(), stdout=io.StringIO(), stderr=err, environ={})
    assert run(["witness", "-data-dir", "d", "-listen", "nope"], ctx) == 2  # like server: the real streams
    assert capsys.readouterr().err == "Error: -listen must be IP:PORT, got 'nope'\n"
    assert run(["-help"], ctx) == 0
    assert "witness   Run a DR fencing witness" in err.getvalue()


def test_issue_writes_a_private_bundle_and_never_overwrites(tmp_path: Path) -> None:
    data, out_file = tmp_path / "data", tmp_path / "node-a.pem"
    code, out, err = cli(["issue", "-data-dir", str(data), "-name", "node-a", "-out", str(out_file)])
    assert (code, err) == (0, "") and "node-a" in out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600 and stat.S_IMODE(data.stat().st_mode) == 0o700
    assert NodeCert.from_bundle(out_file.read_bytes()).node_id == "node-a"
    code, _, err = cli(["issue", "-data-dir", str(data), "-name", "node-a", "-out", str(out_file)])
    assert code == 1 and err == f"Error: {out_file} already exists\n"


def test_runtime_failures_exit_1(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["-data-dir", str(tmp_path / "file")])
    assert code == 1 and err == f"Error: {tmp_path / 'file'} is not a directory\n"
    data = tmp_path / "data"
    data.mkdir()
    (data / "fence-state.json").write_text("{broken")
    code, _, err = cli(["-data-dir", str(data)])
    assert code == 1 and "unreadable fencing state" in err and err.count("\n") == 1


# -- the real process ------------------------------------------------------------------------------

class Witness:
    """A ``vaultraft witness`` subprocess logging JSON lines to stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, data_dir: Path, *args: str) -> Witness:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "-data-dir", str(data_dir), "-listen", "127.0.0.1:0", "-log-format", "json", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        return cls(proc)

    async def until(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"witness exited before {event}: {self.lines}")
                line = json.loads(raw) if raw.startswith(b"{") else {"event": raw.decode().strip()}
                self.lines.append(line)
                if line["event"] == event:
                    return line

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await self.until("witness_stopped")
            return await self.proc.wait()


async def test_the_witness_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    issue = await asyncio.create_subprocess_exec(*CLI, "issue", "-data-dir", str(data), "-name", "node-a",
                                                 "-out", str(tmp_path / "a.pem"), cwd=ROOT,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await issue.communicate()
    assert issue.returncode == 0 and b"node-a" in out
    bundle = NodeCert.from_bundle((tmp_path / "a.pem").read_bytes())

    first = await Witness.start(data, "-max-lease", "5")
    started = await first.until("witness_started")
    assert started["epoch"] == 0 and started["max_lease"] == 5.0
    client = WitnessClient(started["address"], bundle, timeout=3.0)
    try:
        assert (await client.renew("cluster-a", 3, 4.0)).granted
        assert (await client.promote("cluster-b", 4)).reason == "restart_quarantine"
        logged = await first.until("witness_promote")
        assert logged["client"] == "node-a" and logged["granted"] is False

        # a second witness on the same data dir is refused (one line, exit 1)
        second = await asyncio.create_subprocess_exec(*CLI, "-data-dir", str(data), "-listen", "127.0.0.1:0",
                                                      stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        _, err = await asyncio.wait_for(second.communicate(), 10)
        assert second.returncode == 1 and err.decode().splitlines()[-1] == \
            f"Error: another witness is running on {data}"
        assert await first.stop() == 0
    finally:
        await client.aclose()

    # restarted: the epoch survived, the quarantine starts over
    again = await Witness.start(data, "-max-lease", "5")
    try:
        restarted = await again.until("witness_started")
        assert restarted["epoch"] == 3 and restarted["quarantine"] > 4
        client = WitnessClient(restarted["address"], bundle, timeout=3.0)
        assert (await client.renew("cluster-a", 2, 4.0)).reason == "stale_epoch"
        assert (await client.promote("cluster-b", 4)).reason == "restart_quarantine"
        await client.aclose()
    finally:
        assert await again.stop() == 0
    assert stat.S_IMODE((data / "fence-state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "ca" / "key.pem").stat().st_mode) == 0o600
