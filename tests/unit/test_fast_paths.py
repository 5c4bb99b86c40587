"""Hot-path helpers: the precomputed quorum lease, the journal sync thread, the one-regex
sudo check, and the log processors that must print exactly what structlog's would."""

from __future__ import annotations

import math
import json
import re
import time
from pathlib import Path
from typing import Any

import structlog
from hypothesis import given
from hypothesis import strategies as st

from vaultraft.core.pipeline import _SUDO_PATTERNS, needs_sudo
from vaultraft.logging import ConsoleLines, JSONLines, UTCStamper
from vaultraft.raft.background import JournalSync, lease_expiry


def test_lease_expiry_matches_the_quorum_rule() -> None:
    """expiry(t) is the instant after which "1 + #fresh followers > size/2" turns false."""
    lease = 0.2
    for size, times in [(3, [10.0, 9.0]), (3, [5.0]), (5, [10.0, 9.5, 9.0, 1.0]), (4, [3.0, 2.0, 1.0]),
                        (2, [7.0])]:
        expiry = lease_expiry(times, size, lease)
        for now in [x / 100 + 0.005 for x in range(1200)]:  # off the float-rounded boundaries
            fresh = sum(1 for t in times if now - t < lease)
            assert (now < expiry) == (1 + fresh > size / 2), (size, times, now, expiry)
    assert lease_expiry([], 1, lease) == math.inf
    assert lease_expiry([], 3, lease) == -math.inf


def test_journal_sync_thread(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    sync = JournalSync(str(journal), 0.01)
    assert not sync.sync_once()  # not created yet: nothing to sync, not an error
    journal.write_bytes(b"x" * 100)
    assert sync.sync_once()
    sync.start()
    time.sleep(0.1)
    sync.stop()
    assert sync.syncs >= 3


def test_sudo_regex_is_the_union_of_the_patterns() -> None:
    probes = ["sys/audit", "sys/audit/x", "sys/auditx", "sys/auth/", "sys/auth/x", "sys/raw", "sys/rawx",
              "sys/raw/a/b", "auth/token/accessors", "auth/token/accessors/", "auth/token/accessorsx",
              "sys/storage/raft/snapshot", "sys/storage/raft/snapshot-force", "sys/seal", "sys/sealx",
              "sys/rotate/config", "secret/data/x", "sys/leases/lookup/a", "sys/leases/lookup",
              "auth/token/revoke-orphan", "auth/token/revoke-orphan/x", "sys/step-down", ""]
    for p in probes:
        assert needs_sudo(p) == any(re.fullmatch(rx, p) for rx in _SUDO_PATTERNS), p


def test_log_processors_print_what_structlog_would() -> None:
    ours = UTCStamper()({}, "info", {})["timestamp"]
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ours)
    assert len(ours) == len(theirs) and ours[:17] == theirs[:17]
    event = {"event": "x", "n": 1, "f": 1.5, "s": "é", "none": None, "obj": object(), "l": [1, "a"]}
    ours_line = JSONLines()(None, "info", dict(event))
    theirs_line = structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert "\n" not in ours_line
    obj_repr = repr(event["obj"])
    assert json.loads(ours_line) == json.loads(theirs_line) == {**event, "obj": obj_repr}


_log_values = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
               | st.lists(st.integers(), max_size=3))


@given(st.dictionaries(st.sampled_from(["timestamp", "level", "event", "logger", "logger_name", "a", "b_c",
                                        "status", "path", "zz"]) | st.text(min_size=1, max_size=6),
                       _log_values, max_size=8))
def test_console_lines_print_what_console_renderer_would(event: dict[str, Any]) -> None:
    for key in ("stack", "exception", "exc_info"):  # structlog's own renderer handles these
        event.pop(key, None)
    if "level" in event:  # add_log_level's: a level name (ConsoleRenderer fails on others)
        event["level"] = ["debug", "info", "warning", "error", "critical"][len(str(event["level"])) % 5]
    theirs = structlog.dev.ConsoleRenderer(colors=False)(None, "info", dict(event))
    assert ConsoleLines()(None, "info", dict(event)) == theirs


def test_console_lines_hand_exceptions_to_structlog() -> None:
    try:
        raise ValueError("boom")
    except ValueError as e:
        event = {"event": "request_failed", "level": "error", "exc_info": e}
        line = ConsoleLines()(None, "error", dict(event))
    assert line.startswith("[error    ] request_failed") and "ValueError: boom" in line


class _CountingFile:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


async def test_request_lines_on_the_loop_are_written_once_per_loop_turn_in_order() -> None:
    import asyncio

    from vaultraft.logging import LineWriter

    f = _CountingFile()
    w = LineWriter(f)
    w.batched("r1")
    w.batched("r2")
    assert f.writes == []  # queued until the end of this loop turn
    w.now("e1")  # any other line goes out at once, after what is queued
    assert f.writes == ["r1\nr2\ne1\n"]
    w.batched("r3")
    w.batched("r4")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert f.writes == ["r1\nr2\ne1\n", "r3\nr4\n"]
    w.batched("r5")
    w.flush()  # (also registered with atexit)
    assert f.writes[-1] == "r5\n"


def test_request_lines_off_the_loop_are_written_at_once() -> None:
    from vaultraft.logging import LineWriter

    f = _CountingFile()
    w = LineWriter(f)
    w.batched("x")
    assert f.writes == ["x\n"]


@given(request_id=st.text(max_size=40), method=st.sampled_from(["GET", "POST", "LIST", "DELETE", "x y"]),
       path=st.text(max_size=30), status=st.integers(0, 999),
       duration_ms=st.floats(min_value=0, max_value=1e6, allow_nan=False), remote=st.none() | st.text(max_size=20))
def test_log_request_writes_what_the_request_logger_would(request_id: str, method: str, path: str, status: int,
                                                          duration_ms: float, remote: str | None) -> None:
    import vaultraft.logging as vlog

    saved_config, saved_writer, saved_lines = structlog.get_config(), vlog._writer, vlog._request_lines
    f = _CountingFile()
    try:
        vlog._writer = vlog.LineWriter(f)  # off the loop: every line is written at once
        for fmt in ("standard", "json"):
            vlog.configure_logging("info", fmt)
            structlog.get_logger(vlog.REQUEST_LOGGER).info(
                "http_request", request_id=request_id, method=method, path=path, status=status,
                duration_ms=duration_ms, remote=remote)
            vlog.log_request(request_id, method, path, status, duration_ms, remote)
            theirs, ours = (re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", "T", w) for w in f.writes[-2:])
            assert ours == theirs
        vlog.configure_logging("warn", "standard")
        vlog.log_request(request_id, method, path, status, duration_ms, remote)
        assert len(f.writes) == 4  # below the configured level: nothing
    finally:
        structlog.configure(**saved_config)
        vlog._writer, vlog._request_lines = saved_writer, saved_lines


_segment = st.sampled_from(["a", "b", "sys", "auth", "token", "kv", "x y", "é"])


@given(st.lists(st.lists(_segment, min_size=1, max_size=3), max_size=6),
       st.lists(_segment, max_size=5), st.booleans())
def test_router_match_is_the_longest_mounted_prefix(mounts: list[list[str]], path: list[str], slash: bool) -> None:
    from vaultraft.core.mounts import Route, Router

    router = Router()
    prefixes = {"/".join(m) + "/" for m in mounts}
    for p in prefixes:
        router.mount(Route(p, None, None, None))  # type: ignore[arg-type]
    request_path = "/".join(path) + ("/" if slash and path else "")
    probe = request_path if request_path.endswith("/") else request_path + "/"
    candidates = [p for p in prefixes if probe.startswith(p)]
    expected = max(candidates, key=len) if candidates else None
    got = router.match(request_path)
    assert (got.prefix if got is not None else None) == expected


def test_router_refuses_a_prefix_without_its_slash() -> None:
    import pytest

    from vaultraft.core.mounts import Route, Router

    for bad in ("secret", "/", ""):
        with pytest.raises(ValueError):
            Router().mount(Route(bad, None, None, None))  # type: ignore[arg-type]
