"""Short load test (bench/load_test.py): real station + trainer processes, concurrent Score streams.

Below the configured limits no request may fail and every acknowledged record reaches the trainer; above the
station's queue limit the overflow is answered RESOURCE_EXHAUSTED, and no request is left unanswered past
its deadline. The 10-minute soak (leak check) is ``make soak``, not part of the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_test import LoadConfig, rss_summary, run_load


def test_rss_slope_is_least_squares_over_the_last_80_percent() -> None:
    flat_then_growing = [(t, 100.0 if t < 20 else 100.0 + (t - 20) / 60.0 * 6.0) for t in range(101)]
    s = rss_summary(flat_then_growing, 100.0)
    assert s["slope_mb_per_min_last80"] == pytest.approx(6.0, abs=1e-6)
    assert (s["start_mb"], s["peak_mb"]) == (100.0, 108.0)
    assert rss_summary([(float(t), 50.0) for t in range(10)], 10.0)["slope_mb_per_min_last80"] == 0.0


@pytest.mark.slow
def test_below_the_queue_limit_nothing_fails_and_nothing_is_lost(tmp_path: Path) -> None:
    cfg = LoadConfig(streams=3, inflight=2, duration_s=10.0, deadline_s=20.0, queue_size=64, workers=8,
                     sample_s=0.5)
    rep = run_load(cfg, tmp_path / "out", tmp_path / "work")
    print(f"\nbelow the limit: {rep['ok']} slices in {rep['duration_s']} s ({rep['slices_per_s']}/s), "
          f"p50 {rep['p50_ms']} ms, p99 {rep['p99_ms']} ms; errors {rep['item_errors']} {rep['rpc_errors']}; "
          f"acknowledged records lost: {rep['acknowledged_lost']}")
    assert rep["below_limits"]
    assert rep["ok"] > 0 and rep["ok"] == rep["sent"]
    assert rep["item_errors"] == {} and rep["rpc_errors"] == {} and rep["hangs"] == 0
    assert rep["station_exit_code"] == 0
    assert rep["acknowledged_lost"] == 0  # the trainer stored every record the station acknowledged
    assert rep["rss"]["station"]["samples"] >= 5 and rep["rss"]["trainer"]["samples"] >= 5
    assert (tmp_path / "out" / "load.png").stat().st_size > 1000


@pytest.mark.slow
def test_above_the_queue_limit_the_overflow_is_refused_never_hung(tmp_path: Path) -> None:
    cfg = LoadConfig(streams=4, inflight=4, duration_s=8.0, deadline_s=10.0, queue_size=2, max_batch=2,
                     workers=8, sample_s=0.5)
    rep = run_load(cfg, tmp_path / "out", tmp_path / "work")
    print(f"\nabove the queue limit: {rep['ok']} scored ({rep['slices_per_s']}/s, p50 {rep['p50_ms']} ms, "
          f"p99 {rep['p99_ms']} ms), errors {rep['item_errors']} {rep['rpc_errors']}, "
          f"hangs {rep['hangs']}; acknowledged records lost: {rep['acknowledged_lost']}")
    assert not rep["below_limits"]
    assert rep["item_errors"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert set(rep["item_errors"]) == {"RESOURCE_EXHAUSTED"} and rep["rpc_errors"] == {}
    assert rep["hangs"] == 0 and rep["stuck_streams"] == 0
    assert rep["ok"] + rep["item_errors"]["RESOURCE_EXHAUSTED"] == rep["sent"]  # every request answered
    assert rep["ok"] > 0 and rep["acknowledged_lost"] == 0


@pytest.mark.slow
def test_above_the_concurrent_rpc_limit_extra_streams_are_refused_never_hung(tmp_path: Path) -> None:
    cfg = LoadConfig(streams=6, inflight=1, duration_s=8.0, deadline_s=5.0, workers=4, sample_s=0.5)
    rep = run_load(cfg, tmp_path / "out", tmp_path / "work")
    print(f"\nabove the RPC limit: {rep['ok']} scored ({rep['slices_per_s']}/s, p50 {rep['p50_ms']} ms, "
          f"p99 {rep['p99_ms']} ms), errors {rep['item_errors']} {rep['rpc_errors']}, "
          f"hangs {rep['hangs']}; acknowledged records lost: {rep['acknowledged_lost']}")
    assert not rep["below_limits"]
    assert rep["rpc_errors"].get("RESOURCE_EXHAUSTED", 0) > 0 and set(rep["rpc_errors"]) == {"RESOURCE_EXHAUSTED"}
    assert set(rep["item_errors"]) <= {"RESOURCE_EXHAUSTED"} and rep["hangs"] == 0
    assert rep["ok"] + sum(rep["item_errors"].values()) == rep["sent"]
    assert rep["ok"] > 0 and rep["acknowledged_lost"] == 0
