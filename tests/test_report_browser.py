"""report.html and compare.html of real runs, opened in headless Chromium (Debian's
package) over the DevTools protocol: no console errors, every chart the page
declares drawn with a non-empty box, and a full-page screenshot of each saved as
a test artifact ($MODELSOAK_TEST_ARTIFACTS, else under the test's tmp_path).

The runs: a closed-loop run with the server's metrics (memory, breakdown), and a
distributed open-loop spike (a master and two workers, --processes 2) whose
offered rate changes with its three phases."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest import charts, report
from loadtest.results import Breakdown, MemorySeries, Summary
from loadtest.series import read_points
from tests.browser_support import CHROMIUM, Chromium, PageResult
from tests.conftest import LocustRun, ServerProcess, run_locust

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
]
MODELSOAK = str(Path(sys.executable).parent / "modelsoak")
SPIKE_PLAN = (
    "spike: {base_users: 2, spike_users: 4, base_s: 2, spike_s: 2, recovery_s: 2, recovery_factor: 50.0}\n"
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("MODELSOAK_TEST_ARTIFACTS")
    path = Path(where) / "report-browser" if where else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def runs(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, LocustRun]:
    server = start_module_server("--model", "mlp", "--memory-interval-s", "0.5")
    base = tmp_path_factory.mktemp("runs")
    (base / "closed").mkdir()
    closed = run_locust(server, base / "closed", "-u", "2", "-r", "2", "-t", "3", "--series-interval", "1",
                        "--server-metrics-url", server.metrics_url)  # fmt: skip
    (base / "spike").mkdir()
    (base / "spike" / "plan.yaml").write_text(SPIKE_PLAN)
    spike = run_locust(server, base / "spike", "--processes", "2", "--scenario", "spike", "--slo-file",
                       "plan.yaml", "--arrival-rate", "40", "--series-interval", "1")  # fmt: skip
    (base / "repeats").mkdir()
    repeated = run_locust(server, base / "repeats", "-u", "2", "-r", "2", "-t", "3", "--repeat", "3")
    # A 2 s phase has too few samples to bound the p99 its recovery check reads: INVALID (4) is right.
    for run in (closed, spike, repeated):
        assert run.returncode in (0, 3, 4) and (run.results / "report.html").exists(), run.output[-3000:]
    return {"closed": closed, "spike": spike, "repeats": repeated}


def _open(browser: Chromium, page: Path, artifacts: Path, name: str) -> PageResult:
    result = browser.open(page)
    (artifacts / f"{name}.png").write_bytes(result.screenshot)
    assert result.errors == [], result.errors
    facts = result.facts
    assert facts["declared"] == facts["figures"] == len(facts["rendered"]), facts
    return result


def _charts_of(results: Path) -> set[str]:
    """The PNGs report.md links, each a real PNG in charts/."""
    md = (
        (results / "report.md").read_text()
        if (results / "report.md").exists()
        else (results / "compare.md").read_text()
    )
    linked = {
        line.split("](charts/")[1].removesuffix(".png)") for line in md.splitlines() if "](charts/" in line
    }
    for key in linked:
        assert (results / "charts" / f"{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    return linked


def test_reports_render_every_chart(runs: dict[str, LocustRun], browser: Chromium, artifacts: Path) -> None:
    closed = _open(browser, runs["closed"].results / "report.html", artifacts, "report-closed-loop")
    want = {"latency", "throughput", "distribution", "memory", "breakdown"}
    assert {f"chart-{k}" for k in want} <= set(closed.facts["rendered"]), closed.facts
    assert {f"chart-{k}" for k in _charts_of(runs["closed"].results)} == set(closed.facts["rendered"])

    spike = _open(browser, runs["spike"].results / "report.html", artifacts, "report-distributed-spike")
    assert {"chart-latency", "chart-throughput", "chart-distribution"} <= set(spike.facts["rendered"])
    html = (runs["spike"].results / "report.html").read_text()
    # The offered rate of each open-loop phase, and the two phase changes after the first.
    assert all(f'id="throughput-offered-{i}"' in html for i in range(3)), "offered rate not drawn per phase"
    assert html.count('id="latency-event-phase-') == 3
    summary = Summary.read(runs["spike"].results / "summary.json")
    assert len(summary.provenance.workers) == 2 and summary.totals.latency_ms is not None
    assert summary.totals.latency_ms.distribution[-1][0] == 100.0


def test_reports_without_points_or_breakdown(runs: dict[str, LocustRun], browser: Chromium, artifacts: Path,
                                            tmp_path: Path) -> None:  # fmt: skip
    """A run with no time-series points, with one, and without the server's breakdown."""
    src = runs["closed"].results
    summary = Summary.read(src / "summary.json")
    lines = (src / "timeseries.jsonl").read_text().splitlines(keepends=True)
    # The one point: one with requests in it (the run's first interval can be a sliver before them).
    measured = [line for line in lines if '"p50_ms"' in line]
    bare = dataclasses.replace(
        summary,
        server_breakdown=Breakdown(False, "the server sent no breakdown"),
        phases=[dataclasses.replace(ph, server_breakdown=None) for ph in summary.phases],
    )
    # A summary written before latency_ms.distribution: the HDR plot falls back to its percentiles.
    lat = summary.totals.latency_ms
    assert lat is not None and len(lat.distribution) > 20
    older = dataclasses.replace(
        summary,
        totals=dataclasses.replace(summary.totals, latency_ms=dataclasses.replace(lat, distribution=[])),
    )
    cases = {"no-points": (summary, []), "one-point": (summary, measured[:1]), "no-breakdown": (bare, lines),
             "no-distribution": (older, lines)}  # fmt: skip
    expected = {
        "no-points": {"distribution", "memory", "breakdown"},
        "one-point": {"latency", "throughput", "distribution", "memory", "breakdown"},
        "no-breakdown": {"latency", "throughput", "distribution", "memory"},
        "no-distribution": {"latency", "throughput", "distribution", "memory", "breakdown"},
    }
    for name, (s, points) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "timeseries.jsonl").write_text("".join(points))
        report.write(folder, s)
        result = _open(browser, folder / "report.html", artifacts, f"report-{name}")
        assert set(result.facts["rendered"]) == {f"chart-{k}" for k in expected[name]}, (name, result.facts)
        assert _charts_of(folder) == expected[name]


def test_compare_two_real_runs(
    runs: dict[str, LocustRun], browser: Chromium, artifacts: Path, tmp_path: Path
) -> None:
    a, b = runs["closed"].results / "summary.json", runs["spike"].results / "summary.json"
    # Closed loop as fast as 2 users go, then an open-loop spike at 40-160/s: throughput falls.
    proc = subprocess.run([MODELSOAK, "compare", str(a), str(b), "-o", str(tmp_path / "ab")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "regression throughput" in proc.stdout and "verdict: REGRESSION (exit code 3)" in proc.stdout
    md = (tmp_path / "ab" / "compare.md").read_text()
    assert "| p99 latency (ms, 99% CI) |" in md and "| regression throughput |" in md
    result = _open(browser, tmp_path / "ab" / "compare.html", artifacts, "compare")
    assert {"chart-latency", "chart-throughput", "chart-distribution", "chart-memory"} == set(
        result.facts["rendered"]
    )
    assert _charts_of(tmp_path / "ab") == {"latency", "throughput", "distribution", "memory"}

    same = subprocess.run([MODELSOAK, "compare", str(a.parent), str(a), "-o", str(tmp_path / "aa")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "verdict: NO REGRESSION (exit code 0)" in same.stdout
    shutil.rmtree(tmp_path / "aa")

    # Repeats on both sides: judged by Welch's test over them (a run against itself: within noise).
    rep = runs["repeats"].results / "summary.json"
    welch = subprocess.run([MODELSOAK, "compare", str(rep), str(rep), "-o", str(tmp_path / "rr")],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert welch.returncode == 0, welch.stdout + welch.stderr
    md = (tmp_path / "rr" / "compare.md").read_text()
    assert "Over the repeats (Welch's t-test" in md and "within noise (Welch p 1)" in md, md


def test_a_day_long_soak_stays_small(
    runs: dict[str, LocustRun], browser: Chromium, artifacts: Path, tmp_path: Path
) -> None:
    """24 hours of 2 s points (43,200) and of 0.5 s memory samples: thinned to 1,500
    per line, the page stays well under a megabyte and every chart still draws."""
    src = runs["closed"].results
    summary = Summary.read(src / "summary.json")
    first = next(p for p in read_points(src / "timeseries.jsonl") if p.p50_ms is not None)
    day = [dataclasses.replace(first, t=2.0 * (i + 1), phase="soak") for i in range(43_200)]
    mem = summary.memory
    assert mem.series is not None and mem.series.bytes
    level = mem.series.bytes[0]
    series = MemorySeries([0.5 * i for i in range(172_800)], [level + 10.0 * i for i in range(172_800)])
    soak = dataclasses.replace(summary, memory=dataclasses.replace(mem, series=series))
    folder = tmp_path / "day"
    folder.mkdir()
    (folder / "report.html").write_text(report.html_report(soak, day, charts.draw(soak, day, folder)))
    assert (folder / "report.html").stat().st_size < 1_000_000
    result = _open(browser, folder / "report.html", artifacts, "report-24h-soak")
    assert {"chart-latency", "chart-throughput", "chart-memory"} <= set(result.facts["rendered"])
