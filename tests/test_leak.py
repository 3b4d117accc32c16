"""The leak detector on synthetic memory series (seeded): leaks are trends, steps are not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from server.leak import LeakSettings, _workspace, detect_leak, theil_sen

MIB = 2**20
BASE = 400 * MIB
SEEDS = range(8)


def rss_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """What RSS sampled at 1 Hz looks like around a level: allocator jitter of a
    few hundred KiB, page-sized steps, and now and then a short spike (a batch of
    temporaries, a GC pass)."""
    jitter = rng.normal(0, 256 * 1024, n)
    spikes = (rng.random(n) < 0.02) * rng.uniform(1, 8, n) * MIB
    return np.round((jitter + spikes) / 4096) * 4096


def series(
    seconds: int, rng: np.random.Generator, slope_bytes_per_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    t = 1.7e9 + np.arange(seconds, dtype=float)  # unix times at 1 Hz
    return t, BASE + slope_bytes_per_s * (t - t[0]) + rss_noise(rng, seconds)


@pytest.mark.parametrize("seed", SEEDS)
def test_flat_noisy_memory_is_no_leak(seed: int) -> None:
    t, v = series(600, np.random.default_rng(seed))
    verdict = detect_leak(t, v, "rss_bytes")
    assert not verdict.suspected, verdict.reason
    assert verdict.samples == 540  # the first 60 s are warm-up


@pytest.mark.parametrize("seed", SEEDS)
def test_one_megabyte_a_minute_is_found_within_five_minutes(seed: int) -> None:
    rate = 1e6 / 60
    t, v = series(300, np.random.default_rng(seed), rate)
    verdict = detect_leak(t, v, "rss_bytes")
    assert verdict.suspected, verdict.reason
    assert verdict.slope_bytes_per_s == pytest.approx(rate, rel=0.25)
    assert verdict.slope_low_bytes_per_s <= rate <= verdict.slope_high_bytes_per_s * 1.1
    assert verdict.slope_bytes_per_hour == pytest.approx(verdict.slope_bytes_per_s * 3600)
    assert "MiB/h" in verdict.reason


@pytest.mark.parametrize("position", [0.1, 0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("ramp_s", [0, 20])
def test_a_cache_filling_once_is_no_leak(position: float, ramp_s: int) -> None:
    """A 64 MiB step (instant, or filling over 20 s) somewhere after warm-up."""
    for seed in SEEDS:
        t, v = series(600, np.random.default_rng(seed))
        start = 60 + position * 540
        fill = np.clip((t - t[0] - start) / max(ramp_s, 1), 0, 1)
        verdict = detect_leak(t, v + 64 * MIB * fill, "rss_bytes")
        assert not verdict.suspected, f"seed {seed}: {verdict.reason}"


def test_warm_up_growth_that_levels_off_is_no_leak() -> None:
    """Growth that slows down (caches and allocator pools filling) past the warm-up."""
    for seed in SEEDS:
        t, v = series(900, np.random.default_rng(seed))
        verdict = detect_leak(t, v + 30 * MIB * (1 - np.exp(-(t - t[0]) / 240)), "rss_bytes")
        assert not verdict.suspected, f"seed {seed}: {verdict.reason}"
        assert verdict.reason.startswith("growth is")


def test_staircase_leak_is_a_leak() -> None:
    """A leak that shows in RSS as a new 4 MiB arena every 30 s is still a trend."""
    t, v = series(600, np.random.default_rng(1))
    verdict = detect_leak(t, v + 4 * MIB * np.floor((t - t[0]) / 30), "rss_bytes")
    assert verdict.suspected, verdict.reason


def test_too_few_samples_give_no_verdict() -> None:
    t, v = series(75, np.random.default_rng(0), 1e6)
    verdict = detect_leak(t, v, "rss_bytes")
    assert not verdict.suspected
    assert verdict.samples == 15
    assert "not enough samples" in verdict.reason
    assert math.isnan(verdict.slope_bytes_per_s)
    assert verdict.as_dict()["slope_bytes_per_s"] is None  # JSON-safe


def test_empty_and_all_nan_series_give_no_verdict() -> None:
    for t, v in ((np.array([]), np.array([])), (np.full(100, np.nan), np.full(100, np.nan))):
        verdict = detect_leak(t, v, "rss_bytes")
        assert not verdict.suspected and verdict.samples == 0 and verdict.window_s == 0.0


def test_constant_series_is_no_leak() -> None:
    t = np.arange(300, dtype=float)
    verdict = detect_leak(t, np.full(300, float(BASE)), "rss_bytes")
    assert not verdict.suspected
    assert verdict.slope_bytes_per_s == 0.0
    assert verdict.p_value == 1.0


def test_nans_are_skipped() -> None:
    rng = np.random.default_rng(3)
    t, v = series(300, rng, 1e6 / 60)
    v[rng.random(300) < 0.1] = np.nan
    t[rng.random(300) < 0.05] = np.nan
    verdict = detect_leak(t, v, "rss_bytes")
    assert verdict.suspected, verdict.reason
    assert verdict.samples < 240


def test_shrinking_memory_is_no_leak() -> None:
    t, v = series(300, np.random.default_rng(0), -1e6 / 60)
    verdict = detect_leak(t, v, "rss_bytes")
    assert not verdict.suspected
    assert verdict.p_value > 0.5


def test_a_trend_below_the_floor_is_not_reported() -> None:
    t = np.arange(600, dtype=float)
    verdict = detect_leak(t, BASE + 100.0 * t, "rss_bytes")  # 100 B/s, clean: significant but tiny
    assert not verdict.suspected
    assert "below the floor" in verdict.reason
    floor0 = detect_leak(t, BASE + 100.0 * t, "rss_bytes", LeakSettings(min_slope_bytes_per_s=0))
    assert floor0.suspected, floor0.reason


def test_unsorted_samples_are_judged_in_time_order() -> None:
    t, v = series(300, np.random.default_rng(5), 1e6 / 60)
    order = np.random.default_rng(6).permutation(300)
    a, b = detect_leak(t, v), detect_leak(t[order], v[order])
    assert a.suspected and b.suspected
    assert a.slope_bytes_per_s == pytest.approx(b.slope_bytes_per_s)


def test_a_day_of_samples_is_reduced_and_still_judged() -> None:
    rng = np.random.default_rng(7)
    t, v = series(86_400, rng, MIB / 3600 * 4)  # 4 MiB/h over a day
    leak = detect_leak(t, v, "rss_bytes", LeakSettings(warmup_s=600))
    assert leak.suspected, leak.reason
    assert leak.slope_bytes_per_hour == pytest.approx(4 * MIB, rel=0.1)
    t, v = series(86_400, rng)
    assert not detect_leak(t, v, "rss_bytes", LeakSettings(warmup_s=600)).suspected


def test_theil_sen_matches_scipy() -> None:
    rng = np.random.default_rng(11)
    ws = _workspace(200)
    for n in (2, 3, 17, 200):
        t = np.sort(rng.uniform(0, 100, n))
        v = 3 * t + rng.normal(0, 20, n)
        ref = stats.theilslopes(v, t, alpha=0.95)
        assert theil_sen(t, v, ws) == pytest.approx((ref.slope, ref.low_slope, ref.high_slope))
    with pytest.raises(ValueError):
        theil_sen(np.arange(201.0), np.arange(201.0), ws)
