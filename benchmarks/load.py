"""An asyncio + aiohttp load generator for vaultraft's KV v2 API, and the statistics it reports.

* :func:`run_load` drives ``concurrency`` workers against one node for at most ``duration_s``
  seconds and at most ``max_requests`` requests, then stops by itself; it records the latency
  and status of every request.
* :func:`summarize` / :func:`median_summary` turn those samples into ops/s (acknowledged 2xx
  only), p50/p90/p99/max latency (of acknowledged requests) and error counts by status.
* :func:`measure_failover` runs a writer against every node of a cluster, kills the active
  one through a callback and reports the time until a write is acknowledged by a new active.

Only loopback targets are accepted. Tokens are never printed or put in a ``repr``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import uvloop

from benchmarks.rawhttp import ProtocolError, RawConnection, encode_request

#: Pseudo-status of a request that got no HTTP response (refused, reset, closed).
STATUS_CONN_ERROR = 0
#: Pseudo-status of a request that hit the per-request timeout.
STATUS_TIMEOUT = -1

Op = Literal["write", "read"]


# ---- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request: its latency in seconds and HTTP status (or a pseudo-status < 100)."""

    latency_s: float
    status: int

    @property
    def ok(self) -> bool:
        """Whether the server acknowledged the request (2xx)."""
        return 200 <= self.status < 300


def status_label(status: int) -> str:
    """``"timeout"``, ``"conn_error"`` or the decimal HTTP status."""
    if status == STATUS_TIMEOUT:
        return "timeout"
    if status == STATUS_CONN_ERROR:
        return "conn_error"
    return str(status)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 ≤ q ≤ 100) of an ascending, non-empty sequence.

    Linear interpolation between closest ranks (numpy's default "linear" method,
    Excel's PERCENTILE.INC): rank ``h = (n - 1) * q / 100``, then interpolate between
    ``v[floor(h)]`` and ``v[ceil(h)]``. Raises ValueError on an empty sequence or q out of range.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    h = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(h)
    hi = math.ceil(h)
    v_lo, v_hi = sorted_values[lo], sorted_values[hi]
    return v_lo + (v_hi - v_lo) * (h - lo)


@dataclass(frozen=True)
class Summary:
    """What one measurement (or the median of several) amounts to.

    ``ops_per_s`` counts acknowledged (2xx) requests only; the latency figures are over
    acknowledged requests, in milliseconds, and None when nothing was acknowledged.
    ``errors`` maps a status label (:func:`status_label`) to the count of non-2xx outcomes.
    """

    requests: int
    ok: int
    elapsed_s: float
    ops_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        """The number of requests that were not acknowledged."""
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with rounded figures."""
        def r(x: float | None, nd: int = 3) -> float | None:
            return None if x is None else round(x, nd)
        return {"requests": self.requests, "ok": self.ok, "elapsed_s": r(self.elapsed_s),
                "ops_per_s": r(self.ops_per_s, 1), "p50_ms": r(self.p50_ms), "p90_ms": r(self.p90_ms),
                "p99_ms": r(self.p99_ms), "max_ms": r(self.max_ms), "errors": dict(sorted(self.errors.items()))}


def summarize(samples: Iterable[Sample], elapsed_s: float) -> Summary:
    """Summarize the samples of one measurement that took ``elapsed_s`` seconds (must be > 0)."""
    if elapsed_s <= 0:
        raise ValueError("elapsed time must be positive")
    ok_lat: list[float] = []
    errors: Counter[str] = Counter()
    total = 0
    for s in samples:
        total += 1
        if s.ok:
            ok_lat.append(s.latency_s * 1000.0)
        else:
            errors[status_label(s.status)] += 1
    ok_lat.sort()
    pct: list[float | None] = [None, None, None, None]
    if ok_lat:
        pct = [percentile(ok_lat, 50), percentile(ok_lat, 90), percentile(ok_lat, 99), ok_lat[-1]]
    return Summary(requests=total, ok=len(ok_lat), elapsed_s=elapsed_s, ops_per_s=len(ok_lat) / elapsed_s,
                   p50_ms=pct[0], p90_ms=pct[1], p99_ms=pct[2], max_ms=pct[3], errors=dict(errors))


def _median_opt(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_summary(reps: Sequence[Summary]) -> Summary:
    """The per-figure median of several repetitions (errors are summed over all of them).

    Each figure is the median of that figure across repetitions (so p99 is the median p99,
    not the p99 of the pooled samples). Latency medians ignore repetitions without any
    acknowledged request. Raises ValueError on an empty sequence.
    """
    if not reps:
        raise ValueError("median of no repetitions")
    errors: Counter[str] = Counter()
    for s in reps:
        errors.update(s.errors)
    return Summary(
        requests=round(statistics.median(s.requests for s in reps)),
        ok=round(statistics.median(s.ok for s in reps)),
        elapsed_s=statistics.median(s.elapsed_s for s in reps),
        ops_per_s=statistics.median(s.ops_per_s for s in reps),
        p50_ms=_median_opt([s.p50_ms for s in reps]),
        p90_ms=_median_opt([s.p90_ms for s in reps]),
        p99_ms=_median_opt([s.p99_ms for s in reps]),
        max_ms=_median_opt([s.max_ms for s in reps]),
        errors=dict(errors),
    )


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


# ---- the load generator -------------------------------------------------------------------------

T = TypeVar("T")


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's client side (``main``) to completion on uvloop, as ``asyncio.run``.

    The load generator shares this machine's 2 cores with the servers it measures; on
    uvloop the raw client costs about 20 % less CPU per request than on asyncio's default
    loop (a KV write at 16 clients: 0.21 → 0.17 ms), CPU that the servers get back.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)



def check_loopback(url: str) -> None:
    """Raise ValueError unless ``url`` is http(s) to localhost or a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing a non-loopback benchmark target: {host!r}")


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: ``op`` against ``base_url`` with ``concurrency`` workers.

    Writes POST ``/v1/<mount>/data/<key_prefix><worker>-<n>`` with a ``payload_bytes``-sized
    value (or, with ``key_space``, one of ``key_space`` keys in turn: updates); reads GET keys from ``read_keys`` (worker ``w`` starts at key ``w`` and strides by
    ``concurrency``). The run ends at ``duration_s`` or after ``max_requests`` requests,
    whichever comes first.
    """

    base_url: str
    token: str = field(repr=False)
    op: Op
    concurrency: int = 32
    duration_s: float = 5.0
    max_requests: int = 200_000
    mount: str = "secret"
    key_prefix: str = "bench/"
    payload_bytes: int = 64
    read_keys: tuple[str, ...] = field(default=(), repr=False)
    #: Writes update ``key_space`` keys over and over (0: every write creates a new key).
    key_space: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    request_timeout_s: float = 5.0
    error_backoff_s: float = 0.01


@dataclass(frozen=True)
class LoadResult:
    """A finished measurement: its summary and (for writes) the keys the server acknowledged."""

    summary: Summary
    written_keys: tuple[str, ...] = field(repr=False)


def _session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1), limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 auto_decompress=False)


async def _one(session: aiohttp.ClientSession, method: str, url: str, body: bytes | None,
               headers: dict[str, str]) -> tuple[int, float]:
    """Send one request; (status or pseudo-status, latency in seconds)."""
    t0 = time.perf_counter()
    try:
        async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            status = resp.status
    except TimeoutError:
        status = STATUS_TIMEOUT
    except (aiohttp.ClientError, OSError):
        status = STATUS_CONN_ERROR
    return status, time.perf_counter() - t0


async def _one_raw(conn: RawConnection, request: bytes, timeout_s: float) -> tuple[int, float]:
    """Send one pre-encoded request on ``conn``; (status or pseudo-status, latency in seconds)."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            status = await conn.send(request)
    except TimeoutError:
        status = STATUS_TIMEOUT
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError):
        status = STATUS_CONN_ERROR
    return status, time.perf_counter() - t0


def _write_body(payload_bytes: int) -> bytes:
    return json.dumps({"data": {"value": "v" * payload_bytes}}).encode()


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one bounded measurement; never raises for server-side failures (they are samples).

    Plain-http targets are driven by :class:`benchmarks.rawhttp.RawConnection` (one
    keep-alive connection per worker, a fraction of aiohttp's client CPU), https targets by
    aiohttp. Raises ValueError for a non-loopback target, a read without keys or a bad bound.
    """
    check_loopback(spec.base_url)
    if spec.concurrency < 1 or spec.duration_s <= 0 or spec.max_requests < 1:
        raise ValueError("concurrency, duration and max_requests must be positive")
    if spec.op == "read" and not spec.read_keys:
        raise ValueError("a read load needs keys written earlier")
    headers = {"X-Vault-Token": spec.token, "Content-Type": "application/json", **dict(spec.headers)}
    body = _write_body(spec.payload_bytes)
    prefix = f"/v1/{spec.mount}/data/"
    base = spec.base_url.rstrip("/") + prefix
    raw = urlsplit(spec.base_url).scheme == "http"
    samples: list[Sample] = []
    written: list[str] = []
    issued = 0
    start = time.perf_counter()
    deadline = start + spec.duration_s

    async def worker(w: int, session: aiohttp.ClientSession | None) -> None:
        nonlocal issued
        n = 0
        conn = RawConnection(spec.base_url) if raw else None
        try:
            while time.perf_counter() < deadline and issued < spec.max_requests:
                issued += 1
                if spec.op == "write":
                    key = (f"{spec.key_prefix}{(w + n * spec.concurrency) % spec.key_space}" if spec.key_space
                           else f"{spec.key_prefix}{w}-{n}")
                    method, data = "POST", body
                else:
                    key = spec.read_keys[(w + n * spec.concurrency) % len(spec.read_keys)]
                    method, data = "GET", None
                if conn is not None:
                    req = encode_request(method, conn.netloc, prefix + key, headers, data)
                    status, lat = await _one_raw(conn, req, spec.request_timeout_s)
                else:
                    assert session is not None
                    status, lat = await _one(session, method, base + key, data, headers)
                if spec.op == "write" and 200 <= status < 300:
                    written.append(key)
                n += 1
                samples.append(Sample(lat, status))
                if not 200 <= status < 300:
                    await asyncio.sleep(spec.error_backoff_s)
        finally:
            if conn is not None:
                await conn.close()

    async def drive(session: aiohttp.ClientSession | None) -> None:
        tasks = [asyncio.create_task(worker(w, session)) for w in range(spec.concurrency)]
        # Every worker ends by the deadline plus one request timeout; this bound is a backstop.
        _, pending = await asyncio.wait(tasks, timeout=spec.duration_s + spec.request_timeout_s + 5.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if raw:
        await drive(None)
    else:
        async with _session(spec.concurrency, spec.request_timeout_s) as session:
            await drive(session)
    elapsed = time.perf_counter() - start
    return LoadResult(summarize(samples, elapsed), tuple(written))


# ---- failover -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailoverResult:
    """One kill -9 of the active node under a write load.

    ``failover_s`` is the time from the kill to the first write acknowledged by another node
    (None if none was within the timeout). ``lost`` counts writes acknowledged before the kill
    that the new active node could not read back (None when not checked).
    """

    failover_s: float | None
    killed: str
    new_active: str | None
    acked_before_kill: int
    acked_after_kill: int
    errors: dict[str, int]
    lost: int | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"failover_s": None if self.failover_s is None else round(self.failover_s, 3),
                "killed": self.killed, "new_active": self.new_active,
                "acked_before_kill": self.acked_before_kill, "acked_after_kill": self.acked_after_kill,
                "errors": dict(sorted(self.errors.items())), "lost": self.lost}


async def measure_failover(node_urls: Sequence[str], token: str, active_url: str, kill: Callable[[], None], *,
                           key_prefix: str = "bench/failover/", workers_per_node: int = 2,
                           warmup_s: float = 1.0, timeout_s: float = 30.0, request_timeout_s: float = 2.0,
                           retry_pause_s: float = 0.01, verify_limit: int = 2000) -> FailoverResult:
    """Kill the active node under a steady write load; measure the time to the next acknowledged write.

    Writers are pinned to each node and send ``X-Vault-No-Request-Forwarding`` so only the
    active node acknowledges (a standby answers 307). After ``warmup_s`` of acknowledged
    writes, ``kill()`` is called (in a thread); the clock starts just before. The first 2xx
    from a node other than ``active_url`` completed after that instant stops the clock. Then
    up to ``verify_limit`` writes acknowledged before the kill are read back from the new
    active node. Raises RuntimeError if nothing was acknowledged during the warm-up.
    """
    for u in node_urls:
        check_loopback(u)
    headers = {"X-Vault-Token": token, "Content-Type": "application/json", "X-Vault-No-Request-Forwarding": "true"}
    body = _write_body(64)
    kill_at: float | None = None
    first_after: tuple[float, str] | None = None
    done = asyncio.Event()
    acked_before: list[str] = []
    acked_after = 0
    errors: Counter[str] = Counter()
    stop_at = time.perf_counter() + warmup_s + timeout_s + 5.0

    async def writer(url: str, w: int, session: aiohttp.ClientSession) -> None:
        nonlocal first_after, acked_after
        n = 0
        while not done.is_set() and time.perf_counter() < stop_at:
            key = f"{key_prefix}{w}-{n}"
            n += 1
            sent = time.perf_counter()
            status, _ = await _one(session, "POST", f"{url}/v1/secret/data/{key}", body, headers)
            now = time.perf_counter()
            if 200 <= status < 300:
                if kill_at is None or sent < kill_at and url == active_url:
                    acked_before.append(key)
                elif url != active_url:
                    acked_after += 1
                    if first_after is None:
                        first_after = (now, url)
                        done.set()
            else:
                if kill_at is not None:
                    errors[status_label(status)] += 1
                await asyncio.sleep(retry_pause_s)

    async with _session(len(node_urls) * workers_per_node, request_timeout_s) as session:
        tasks = [asyncio.create_task(writer(u, i * workers_per_node + j, session))
                 for i, u in enumerate(node_urls) for j in range(workers_per_node)]
        await asyncio.sleep(warmup_s)
        if not acked_before:
            done.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise RuntimeError("no write was acknowledged before the kill")
        kill_at = time.perf_counter()
        await asyncio.to_thread(kill)
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        except TimeoutError:
            pass
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        lost: int | None = None
        if first_after is not None:
            lost = await _count_missing(session, first_after[1], token, acked_before[-verify_limit:])
    return FailoverResult(
        failover_s=None if first_after is None else first_after[0] - kill_at,
        killed=active_url, new_active=None if first_after is None else first_after[1],
        acked_before_kill=len(acked_before), acked_after_kill=acked_after, errors=dict(errors), lost=lost)


async def _count_missing(session: aiohttp.ClientSession, url: str, token: str, keys: Sequence[str]) -> int:
    """How many of ``keys`` the node at ``url`` does not return (16 readers at a time)."""
    sem = asyncio.Semaphore(16)
    headers = {"X-Vault-Token": token}

    async def check(key: str) -> bool:
        async with sem:
            for _ in range(3):
                status, _ = await _one(session, "GET", f"{url}/v1/secret/data/{key}", None, headers)
                if status == 200:
                    return True
                if status == 404:
                    return False
                await asyncio.sleep(0.2)
            return False

    found = await asyncio.gather(*(check(k) for k in keys))
    return sum(1 for f in found if not f)
