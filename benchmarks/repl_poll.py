"""A replication-status poller running in its own process.

It reads the DR secondary's ``last_remote_wal`` every ``interval_s`` (plus the request's round
trip) and, every ``primary_every``-th time, the primary's ``last_wal``, over keep-alive
connections (``sys/replication/dr/status`` needs no token). A separate process
(``python -m benchmarks.repl_poll``) keeps its timestamps free of the load generator's event
loop and GIL; ``time.monotonic()`` is the system-wide CLOCK_MONOTONIC on Linux, so the times
compare with the writer's.

* the secondary's samples are ``(t_received, last_remote_wal)``, kept only when the value
  changed: the first time a value was seen (an upper bound on when the secondary had it);
* the primary's samples are ``(t_sent, last_wal)``, all kept: the primary had at least that
  WAL index when the request was sent (a lower bound), which is what mapping a write's
  ``X-Vault-Index`` to a WAL index needs.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_PATH = "/v1/sys/replication/dr/status"
_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class PollResult:
    """What the poller saw (see the module docstring for the sample semantics)."""

    secondary: list[tuple[float, int]] = field(default_factory=list)
    primary: list[tuple[float, int]] = field(default_factory=list)
    secondary_polls: int = 0
    primary_polls: int = 0
    errors: int = 0
    started: float = 0.0
    stopped: float = 0.0

    @property
    def poll_period_ms(self) -> float | None:
        """The mean time between two polls of the secondary."""
        if self.secondary_polls < 2:
            return None
        return (self.stopped - self.started) * 1000.0 / self.secondary_polls


class _Status:
    """A keep-alive connection to one node's DR status endpoint."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, field_name: str) -> int | None:
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
            try:
                self.conn.request("GET", STATUS_PATH)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.status != 200:
                    return None
                data = json.loads(raw).get("data") or {}
                return int(data.get(field_name) or 0)
            except (OSError, http.client.HTTPException, ValueError):
                self.conn.close()
                self.conn = None
        return None


def _poll(secondary_port: int, primary_port: int, interval_s: float, primary_every: int,
          stop: threading.Event) -> PollResult:
    """Poll until ``stop`` is set; what was seen."""
    sec, prim = _Status(secondary_port), _Status(primary_port)
    res = PollResult(started=time.monotonic())
    last: int | None = None
    i = 0
    while not stop.is_set():
        v = sec.get("last_remote_wal")
        t = time.monotonic()
        res.secondary_polls += 1
        if v is None:
            res.errors += 1
        elif v != last:
            res.secondary.append((t, v))
            last = v
        if i % primary_every == 0:
            t_sent = time.monotonic()
            p = prim.get("last_wal")
            res.primary_polls += 1
            if p is None:
                res.errors += 1
            else:
                res.primary.append((t_sent, p))
        i += 1
        if interval_s > 0:
            time.sleep(interval_s)
    res.stopped = time.monotonic()
    return res


def main(argv: list[str] | None = None) -> int:
    """The child process: ``SECONDARY_PORT PRIMARY_PORT INTERVAL_S PRIMARY_EVERY``; polls until
    stdin closes (or a line arrives), then writes the :class:`PollResult` as JSON to stdout."""
    args = sys.argv[1:] if argv is None else argv
    sec_port, prim_port, interval, every = int(args[0]), int(args[1]), float(args[2]), int(args[3])
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    print("ready", flush=True)
    res = _poll(sec_port, prim_port, interval, every, stop)
    json.dump(res.__dict__, sys.stdout)
    sys.stdout.flush()
    return 0


class Poller:
    """Start/stop the poller child process; :meth:`stop` returns its :class:`PollResult`."""

    def __init__(self, secondary_port: int, primary_port: int, interval_s: float = 0.002,
                 primary_every: int = 4) -> None:
        self._args = [str(secondary_port), str(primary_port), str(interval_s), str(primary_every)]
        self._proc: subprocess.Popen[str] | None = None

    def start(self, warmup_s: float = 0.2) -> Poller:
        """Start polling; returns once the child runs (and ``warmup_s`` later)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.repl_poll", *self._args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT, env=env)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the poller process did not start")
        time.sleep(warmup_s)
        return self

    def stop(self, timeout: float = 20.0) -> PollResult:
        """Stop the child and collect its samples."""
        assert self._proc is not None
        try:
            out, _ = self._proc.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise RuntimeError("the poller process did not stop") from None
        data: dict[str, Any] = json.loads(out)
        res = PollResult(**data)
        res.secondary = [(float(t), int(v)) for t, v in res.secondary]
        res.primary = [(float(t), int(v)) for t, v in res.primary]
        return res


if __name__ == "__main__":
    raise SystemExit(main())
