"""The benchmark's statistics: percentiles, per-run summaries, medians across repetitions."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

# benchmarks/ is not an installed package (pyproject installs vaultraft* and cluster* only); make the
# repository root importable. Drop this once pytest's ``pythonpath = ["."]`` is configured.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.load import (STATUS_CONN_ERROR, STATUS_TIMEOUT, Sample, Summary,  # noqa: E402
                             check_loopback, median_summary, percentile, ratio, status_label, summarize)


def test_percentile_matches_linear_interpolation_on_known_values() -> None:
    v = [1.0, 2.0, 3.0, 4.0]
    assert percentile(v, 0) == 1.0
    assert percentile(v, 100) == 4.0
    assert percentile(v, 50) == 2.5          # h = 1.5 -> halfway between 2 and 3
    assert percentile(v, 25) == pytest.approx(1.75)
    assert percentile(v, 90) == pytest.approx(3.7)
    values = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 50) == pytest.approx(50.5)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 0) == 7.5
    assert percentile([7.5], 99) == 7.5


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)
    with pytest.raises(ValueError):
        percentile([1.0], math.nan)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_lies_within_bounds_and_is_monotonic(values: list[float], q: float) -> None:
    v = sorted(values)
    p = percentile(v, q)
    assert v[0] <= p <= v[-1]
    assert percentile(v, min(100.0, q + 1)) >= p
    assert percentile(v, 50) == pytest.approx(statistics.median(v))


def test_summarize_counts_only_acknowledged_requests_for_throughput_and_latency() -> None:
    samples = ([Sample(0.001 * i, 200) for i in range(1, 101)]            # 1..100 ms, acknowledged
               + [Sample(0.0005, 204)]                                    # 0.5 ms, acknowledged
               + [Sample(5.0, 500), Sample(5.0, 500), Sample(0.0001, 307),
                  Sample(2.0, STATUS_TIMEOUT), Sample(0.0, STATUS_CONN_ERROR)])
    s = summarize(samples, elapsed_s=2.0)
    assert s.requests == 106
    assert s.ok == 101
    assert s.ops_per_s == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.0)
    assert s.max_ms == pytest.approx(100.0)     # the 5 s errors do not count as latency
    assert s.p99_ms == pytest.approx(99.0)
    assert s.p90_ms is not None and s.p50_ms is not None and s.p99_ms is not None
    assert s.p50_ms < s.p90_ms < s.p99_ms
    assert s.errors == {"500": 2, "307": 1, "timeout": 1, "conn_error": 1}
    assert s.error_count == 5


def test_summarize_without_acknowledged_requests_has_no_latency() -> None:
    s = summarize([Sample(0.1, 503), Sample(0.2, 503)], elapsed_s=1.0)
    assert s.ok == 0 and s.ops_per_s == 0.0
    assert s.p50_ms is None and s.p99_ms is None and s.max_ms is None
    assert s.errors == {"503": 2}
    with pytest.raises(ValueError):
        summarize([], elapsed_s=0.0)


def _s(ops: float, p50: float | None, errors: dict[str, int] | None = None) -> Summary:
    return Summary(requests=int(ops), ok=int(ops), elapsed_s=1.0, ops_per_s=ops, p50_ms=p50,
                   p90_ms=None if p50 is None else p50 * 2, p99_ms=None if p50 is None else p50 * 3,
                   max_ms=None if p50 is None else p50 * 4, errors=errors or {})


def test_median_summary_takes_each_figure_median_and_sums_errors() -> None:
    m = median_summary([_s(900, 10.0, {"500": 1}), _s(1200, 30.0), _s(1000, 12.0, {"500": 2, "timeout": 1})])
    assert m.ops_per_s == 1000
    assert m.p50_ms == 12.0
    assert m.p99_ms == 36.0
    assert m.requests == 1000
    assert m.errors == {"500": 3, "timeout": 1}


def test_median_summary_of_even_count_averages_and_ignores_missing_latency() -> None:
    m = median_summary([_s(100, 10.0), _s(300, 20.0), _s(0, None), _s(200, 30.0)])
    assert m.ops_per_s == 150
    assert m.p50_ms == 20.0                      # median of 10, 20, 30 (the empty repetition skipped)
    with pytest.raises(ValueError):
        median_summary([])


def test_ratio_and_labels() -> None:
    assert ratio(500.0, 1000.0) == 0.5
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None
    assert status_label(STATUS_TIMEOUT) == "timeout"
    assert status_label(STATUS_CONN_ERROR) == "conn_error"
    assert status_label(429) == "429"


def test_summary_json_is_rounded_and_sorted() -> None:
    s = summarize([Sample(0.0012345, 200), Sample(0.1, 500)], elapsed_s=3.0)
    j = s.to_json()
    assert j["p50_ms"] == 1.234 or j["p50_ms"] == 1.235
    assert j["ops_per_s"] == 0.3
    assert j["errors"] == {"500": 1}


def test_only_loopback_targets_are_accepted() -> None:
    check_loopback("http://127.0.0.1:8200")
    check_loopback("http://127.9.9.9:8200")
    check_loopback("http://localhost:8200")
    check_loopback("http://[::1]:8200")
    for bad in ("http://10.0.0.1:8200", "http://example.com", "ftp://127.0.0.1/", "http://0.0.0.0:8200"):
        with pytest.raises(ValueError):
            check_loopback(bad)


def test_server_events_keep_every_line_but_the_request_lines(tmp_path: Path) -> None:
    from benchmarks.run import keep_server_events

    for node, text in {"cluster/node0": "a became_active\nb http_request status=200\nc raft_state_changed\n",
                       "dev": "d http_request status=503\ne server_started\n"}.items():
        (tmp_path / node).mkdir(parents=True)
        (tmp_path / node / "server.log").write_text(text)
    dest = keep_server_events(tmp_path, tmp_path / "events.log")
    assert dest.read_text().splitlines() == ["cluster/node0: a became_active", "cluster/node0: c raft_state_changed",
                                             "dev: e server_started"]


def _point(ops: float, p50: float) -> Summary:
    return Summary(requests=int(ops * 5), ok=int(ops * 5), elapsed_s=5.0, ops_per_s=ops, p50_ms=p50,
                   p90_ms=p50 * 1.3, p99_ms=p50 * 2, max_ms=p50 * 3)


def test_write_targets_must_hold_at_one_load() -> None:
    from benchmarks.run import Bench, Scenario, targets

    def bench(*rows: tuple[int, float, float]) -> Bench:
        b = Bench(duration_s=5, concurrency=32, reps=1, max_requests=1000, warmup_s=0, write_concurrency=(16,))
        for clients, ops, p50 in rows:
            name = "cluster write @active" if clients == 32 else f"cluster write @active, {clients} clients"
            b.scenarios.append(Scenario(name, "write", "active", clients, reps=[_point(ops, p50)]))
        return b

    # throughput only at 32 clients, latency only at 16: each alone passes, together they fail
    t = targets(bench((32, 1050, 30.0), (16, 950, 16.0)))
    assert [x["pass"] for x in t[:3]] == [True, True, False]
    assert t[0]["measured"] == "1050 (32 clients)" and t[1]["measured"] == "16.0 ms (16 clients)"
    assert t[2]["measured"] == "16 clients: 950/s, p50 16.00 ms; 32 clients: 1050/s, p50 30.00 ms"
    assert [x["pass"] for x in targets(bench((32, 1100, 29.0), (16, 1010, 15.8)))[:3]] == [True, True, True]
    assert [x["pass"] for x in targets(bench())[:3]] == [None, None, None]  # the cluster was not run


def test_the_client_side_runs_on_uvloop() -> None:
    import asyncio

    from benchmarks.load import run_client

    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert run_client(loop_module()).startswith("uvloop")
