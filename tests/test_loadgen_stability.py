"""--stable against the `sleep` model: a steady closed loop settles within a few
windows and the report shows which counted; an open loop offered more than the
model can serve (the queue and p99 grow every window) never settles: INVALID,
with the reason. The agreement rule itself on hand-made windows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.results import Slice
from loadtest.stability import StabilityWatch, agree
from tests.conftest import ServerProcess, run_locust


def _w(rps: float, p99: float) -> Slice:
    return Slice("p", 0.0, 1.0, 10, rps, p99, p99, p99, True)


def test_the_last_three_windows_must_agree_within_ten_percent() -> None:
    assert agree([_w(10, 100), _w(50, 900), _w(100, 20), _w(105, 21), _w(98, 20.5)])
    assert not agree([_w(100, 20), _w(105, 21)])  # fewer than three
    assert not agree([_w(100, 20), _w(125, 21), _w(100, 20)])  # throughput 11 % off the mean
    assert not agree([_w(100, 20), _w(100, 25), _w(100, 20)])  # p99 off
    assert not agree([_w(100, 20), Slice("p", 0, 0, 5, None, 20, 20, 20, False), _w(100, 20)])


def test_windows_that_close_together_are_judged_up_to_the_most_allowed() -> None:
    # p99 grows 25 % a window for 8 windows, then three agree: they came after the eighth,
    # all at once (the series is written behind the requests), and are not judged.
    watch = StabilityWatch(max_windows=8)
    for p99 in [10 * 1.25**i for i in range(8)] + [60.0, 61.0, 60.5]:
        watch.on_slice(Slice("p", 0.0, 1.0, 10, 100.0, p99, p99, p99, True))
    assert watch.done("p")
    (r,) = watch.results(["p"])
    assert not r.stable and r.counted == [] and len(r.windows) == 11, r
    assert "not stable after 8 windows (at most 8)" in r.reason, r.reason


@pytest.mark.slow
def test_steady_load_settles_and_overload_never_does(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=20", "--max-batch-size", "0")
    common = ("--input-shape", "4", "--warmup-requests", "0", "--stable", "--stable-window-s", "2",
              "--series-interval", "0.5", "--stable-max-windows", "10", "-t", "60")  # fmt: skip
    (tmp_path / "steady").mkdir()
    (tmp_path / "over").mkdir()
    steady = run_locust(srv, tmp_path / "steady", "-u", "1", "-r", "1", *common)
    s = steady.summary()
    (st,) = s["stability"]
    assert st["stable"] and len(st["counted"]) == 3, st
    assert st["counted"] == list(range(st["counted"][0], st["counted"][0] + 3))
    assert len(st["windows"]) <= 11  # at most one more closes while the run stops
    counted = [st["windows"][i] for i in st["counted"]]
    for key in ("rps", "p99_ms"):
        mean = sum(w[key] for w in counted) / 3
        assert all(abs(w[key] - mean) <= 0.1 * mean for w in counted), counted
    # One request at a time of a 20 ms model: at most 50/s, and every p99 above 20 ms.
    assert 25 <= st["rps"] <= 50 and st["p99_ms"] >= 20.0, st
    assert s["verdict"] != "INVALID" or not any("not stable" in r for r in s["generator"]["invalid_reasons"])
    assert "## Stability windows" in (steady.results / "report.md").read_text()
    # 70/s offered to a 50/s model, with users enough to keep every send in flight: the queue
    # grows 20 requests a second, so each 2 s window's latency is 2/t above the last (> 10 % up to 20 s).
    over = run_locust(
        srv,
        tmp_path / "over",
        "-u",
        "400",
        "-r",
        "400",
        "--arrival-rate",
        "70",
        *common,
        "--stable-max-windows",
        "8",
    )
    o = over.summary()
    (ot,) = o["stability"]
    assert not ot["stable"] and len(ot["windows"]) >= 8 and ot["counted"] == [], ot
    assert over.returncode == 4 and o["verdict"] == "INVALID"
    assert any("not stable after" in r for r in o["generator"]["invalid_reasons"]), o["generator"]
