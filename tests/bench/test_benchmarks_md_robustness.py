"""BENCHMARKS.md section 8 (load, soak, faults, fuzzing, security) renders what its JSON/XML inputs say."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import benchmarks_md_robustness as rb


def _load_json(duration: float, slope_station: float, date: str, leak_bound: float | None = None) -> dict:
    n = int(duration // 2)
    d = {"config": {"streams": 4, "inflight": 1, "slice_size": 64, "bundle": None, "backend": "onnxruntime",
                    "threads": 1, "queue_size": 256, "workers": 32, "trainer": True},
         "below_limits": True, "duration_s": duration, "sent": 5000, "ok": 4990, "slices_per_s": 123.4,
         "p50_ms": 11.5, "p99_ms": 77.25, "item_errors": {"RESOURCE_EXHAUSTED": 10}, "rpc_errors": {},
         "hangs": 0, "stuck_streams": 0, "station_exit_code": 0, "trainer_stored": 4990, "acknowledged_lost": 0,
         "rss": {"station": {"samples": n, "start_mb": 600.0, "end_mb": 612.5, "peak_mb": 613.0, "tail_min_mb": 605.0,
                             "slope_mb_per_min_last80": slope_station},
                 "trainer": {"samples": n, "start_mb": 80.0, "end_mb": 81.0, "peak_mb": 81.5, "tail_min_mb": 80.5,
                             "slope_mb_per_min_last80": 0.01}},
         "station_spool": True, "machine": {"loadavg_at_end": [3.0, 2.5, 2.0]}, "date": date,
         "rss_samples": {"station": [[2.0 * i, 600.0 + slope_station * i / 30] for i in range(n)],
                         "trainer": [[2.0 * i, 80.0 + 0.01 * i] for i in range(n)]}}
    if leak_bound is not None:
        d["leak_check"] = {"bound_mb_per_min": leak_bound, "slopes": {"station": slope_station, "trainer": 0.01},
                           "ok": slope_station < leak_bound}
    return d


def test_load_and_soak_figures_and_rss_plot(tmp_path: Path) -> None:
    res, plots = tmp_path / "res", tmp_path / "plots"
    (res / "load_test").mkdir(parents=True)
    (res / "load_test" / "load.json").write_text(json.dumps(
        _load_json(30, 3.1, "2026-12-03 16:09:26 UTC") | {"provenance": {"commit": "abc1234", "command": "lt"}}))
    (res / "soak").mkdir()
    (res / "soak" / "load.json").write_text(json.dumps(_load_json(600, 1.5, "2026-12-03 15:46:44 UTC", 1.0)))
    (res / "soak" / "commit.txt").write_text("7e52304\n")
    text = "\n".join(rb.section_robustness(res, plots))
    load, soak = text.split("### Soak")[0], text.split("### Soak")[1].split("### Fault")[0]
    assert "Measured 2026-12-03 16:08-16:09 UTC at commit `abc1234`" in load and "Command: `lt`" in load
    assert "| slices answered OK / sent | 4990 / 5000: 123.4 slices/s |" in load
    assert "| latency p50 / p99 | 11.5 / 77.25 ms |" in load
    assert "10 (RESOURCE_EXHAUSTED 10); 0 (below both limits" in load
    assert "| trainer stored | 4990 |" in load and "| acknowledged records lost | 0 |" in load
    assert "600.0 MB at start, 612.5 MB at end" in load and "slope 3.1 MB/min" in load
    assert "leak check | not applied to this run" in load
    # the soak: 600 s ending 15:46:44 -> 15:36-15:46; commit from commit.txt; slope 1.5 over a 1.0 bound fails
    assert "Measured 2026-12-03 15:36-15:46 UTC at commit `7e52304`" in soak
    assert "| leak check | **fails**: every slope over the last 80% below 1.0 MB/min (station 1.5, trainer 0.01) |" in soak
    for png in ("load_rss.png", "soak_rss.png"):
        assert (plots / png).stat().st_size > 5000
        assert f"](bench/plots/{png})" in text


def test_the_newer_of_two_soak_files_wins(tmp_path: Path) -> None:
    res = tmp_path / "res"
    (res / "soak").mkdir(parents=True)
    (res / "soak.json").write_text(json.dumps(_load_json(600, 0.3, "2026-12-03 15:46:44 UTC", 1.0)))
    (res / "soak" / "load.json").write_text(json.dumps(_load_json(600, 0.7, "2026-12-04 09:00:00 UTC", 1.0)))
    d, path = rb.find_run(res, "soak")
    assert path == res / "soak" / "load.json" and d["rss"]["station"]["slope_mb_per_min_last80"] == 0.7
    text = "\n".join(rb.section_robustness(res, tmp_path / "p"))
    assert "**passes**: every slope over the last 80% below 1.0 MB/min (station 0.7" in text


def test_missing_results_say_not_measured(tmp_path: Path) -> None:
    (tmp_path / "res").mkdir()
    text = "\n".join(rb.section_robustness(tmp_path / "res", tmp_path / "plots"))
    assert text.startswith(rb.HEADING)
    assert "not measured: no load JSON" in text and "not measured: no soak JSON" in text
    assert "not measured: no fault results" in text and "not measured: no fuzz-*.json" in text
    assert not (tmp_path / "plots" / "soak_rss.png").exists()


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3" time="95.5">
<testcase classname="tests.trainer.test_faults" name="test_kill" time="12.3"/>
<testcase classname="tests.server.test_station_faults" name="test_queued" time="40.0">
  <failure message="AssertionError: the restarted station exited -15">trace</failure></testcase>
<testcase classname="tests.trainer.test_faults" name="test_disk_full" time="0.01">
  <skipped message="cannot mount a size-limited tmpfs; needs root"/></testcase>
</testsuite></testsuites>"""


def test_fault_figures_joined_with_pytest_outcomes(tmp_path: Path) -> None:
    res = tmp_path / "res"
    (res / "faults").mkdir(parents=True)
    (res / "faults" / "junit.xml").write_text(JUNIT)
    for test, fault, figure in (("tests/trainer/test_faults.py::test_kill", "select SIGKILLed", "lost: 0"),
                                ("tests/server/test_station_faults.py::test_queued", "station SIGKILLed",
                                 "40 acknowledged, 39 stored: acknowledged records lost: 1")):
        (res / "faults" / f"{test.split('::')[1]}.json").write_text(json.dumps(
            {"fault": fault, "test": test, "figure": figure}))
    text = "\n".join(rb.section_faults(res))
    assert "(96 s in this run)" in text
    assert "| select SIGKILLed | `tests/trainer/test_faults.py::test_kill` | lost: 0 | passed (12 s) |" in text
    assert ("| station SIGKILLed | `tests/server/test_station_faults.py::test_queued` | 40 acknowledged, 39 stored: "
            "acknowledged records lost: 1 | failed (40 s): AssertionError: the restarted station exited -15 |") in text
    assert ("| test_disk_full | `test_faults.py::test_disk_full` | no figure recorded | skipped (0 s): cannot mount "
            "a size-limited tmpfs; needs root |") in text


def test_fault_figure_file_is_written_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(REPO / "tests" / "support"))
    from bench_figures import RESULTS_ENV, record_fault

    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert record_fault("f", "lost: 0") is None
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    path = record_fault("disk full", "lost: 0", n=3)
    doc = json.loads(path.read_text())
    assert path.parent == tmp_path / "faults" and doc["fault"] == "disk full" and doc["details"] == {"n": 3}
    assert doc["test"].endswith("::test_fault_figure_file_is_written_only_when_asked")  # from PYTEST_CURRENT_TEST
    text = "\n".join(rb.section_faults(tmp_path))
    assert "| disk full |" in text and "no JUnit result" in text


def test_fuzz_counts_per_target_and_total(tmp_path: Path) -> None:
    res = tmp_path / "res"
    (res / "fuzz").mkdir(parents=True)
    for target, n, oc in (("records", 300, {"RecordError": 250, "ok": 50}), ("grpc-ingest", 60, {"ack": 60})):
        (res / "fuzz" / f"fuzz-{target}.json").write_text(json.dumps(
            {"target": target, "inputs": n, "outcomes": oc, "seconds": 4.5, "seed": None,
             "test": f"tests/fuzz/test_x.py::test_{target}"}))
    (res / "fuzz" / "junit.xml").write_text(
        '<testsuites><testsuite time="61"><testcase classname="tests.fuzz.test_x" name="test_records" time="4"/>'
        '<testcase classname="tests.fuzz.test_x" name="test_grpc" time="50"><failure message="boom"/></testcase>'
        "</testsuite></testsuites>")
    text = "\n".join(rb.section_fuzz(res))
    assert "(61 s in this run), default example counts" in text
    assert "pytest: 2 tests, 1 passed, 1 failed: `test_grpc`: boom." in text
    assert "| records | `tests/fuzz/test_x.py::test_records` | 300 | RecordError 250, ok 50 | 4.5 |" in text
    assert "| **total** |  | 360 |" in text


def test_security_claims_each_with_its_test_and_missing_tests_flagged(tmp_path: Path) -> None:
    (tmp_path / "tests" / "a").mkdir(parents=True)
    (tmp_path / "tests" / "a" / "test_sec.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "security.md").write_text(
        "# Security\n\n## Threat model\n\n| actor | may | enforced by |\n| --- | --- | --- |\n| x | y | z |\n\n"
        "## Tokens\n\n| claim | test |\n| --- | --- |\n| constant time | `tests/a/test_sec.py::test_one`, `test_two` |\n"
        "| never logged | `test_sec.py::test_gone` |\n| shorthand path | `test_sec.py` |\n")
    text = "\n".join(rb.section_security(tmp_path / "docs" / "security.md", tmp_path))
    assert "(3 claims" in text and "2 found, **1 not found**" in text
    assert "| Tokens | constant time | `tests/a/test_sec.py::test_one`, `test_two` | yes |" in text
    assert "| Tokens | never logged | `test_sec.py::test_gone` | **not found: test_sec.py::test_gone** |" in text
    assert "| x |" not in text  # the threat-model table has no test column


def test_the_real_security_page_cites_only_existing_tests() -> None:
    claims = rb.security_claims(REPO / "docs" / "security.md")
    assert len(claims) >= 20
    assert [c for c in claims if c["missing"] or not c["tests"]] == []
    assert not any("xfail" in c["test"] and "none is xfail" not in c["test"] for c in claims)


def test_splice_robustness_appends_then_replaces_only_section_8(tmp_path: Path) -> None:
    from make_benchmarks_md import splice

    old = "# B\n\n## Headlines (ratios)\n\n- x\n\n## 7. Other benches\n\nnone found\n"
    (tmp_path / "res").mkdir()
    once = splice(old, {"robustness"}, tmp_path / "res", tmp_path / "plots", tmp_path)
    assert once.count(rb.HEADING) == 1
    # section 7 said "none found" (with load_test/soak in its list): re-rendered without them
    assert "none found in this run's results folder (backfill.json, ddp.json, noise.json)" in once
    assert "robustness only**" in once.split("## Headlines")[0]
    (tmp_path / "res" / "soak.json").write_text(json.dumps(_load_json(600, 0.2, "2026-12-03 15:46:44 UTC", 1.0)))
    twice = splice(once + "\n", {"faults"}, tmp_path / "res", tmp_path / "plots", tmp_path)
    assert twice.count(rb.HEADING) == 1 and "not measured: no soak JSON" not in twice and "**passes**" in twice
    assert "none found in this run's results folder (backfill.json, ddp.json, noise.json)" in twice
    assert "](plots/soak_rss.png)" in twice
