"""The generator watching itself: CPU samples in constant space, and a saturated
worker making the run's verdict INVALID (the distributed tests check the same
numbers arrive from real workers)."""

from __future__ import annotations

import random
from collections import Counter

from loadtest.plan import DEFAULTS
from loadtest.recorder import CpuStats, Merged, NameStats, Snapshot, merge
from loadtest.summary import generator_summary


def _cpu(samples: list[float]) -> CpuStats:
    cpu = CpuStats()
    for s in samples:
        cpu.add(s)
    return cpu


def _snapshot(cpu: CpuStats) -> Snapshot:
    return Snapshot(names={}, windows={}, openloop={}, cpu=cpu.to_snapshot(), started=0.0)


def test_cpu_stats_survive_the_trip_to_the_master() -> None:
    samples = [random.Random(7).uniform(0, 130) for _ in range(500)]
    cpu = merge({"w1": Snapshot.unpack(_snapshot(_cpu(samples)).pack())}).cpu["w1"]
    assert cpu.n == 500 and cpu.max == max(samples) and cpu.last == samples[-1]
    assert abs(cpu.mean - sum(samples) / 500) < 1e-9
    steady = samples[CpuStats.HEAD :]
    expected = sum(1 for s in steady if round(s, 1) >= 90.0) / len(steady)
    assert cpu.saturated_fraction(90.0) == expected


def test_cpu_stats_stay_small_over_a_day() -> None:
    rng = random.Random(3)
    minute = _cpu([rng.gauss(60, 10) for _ in range(60)])
    day = _cpu([rng.gauss(60, 10) for _ in range(86_400)])
    # a day of one-second samples costs no more than the histogram's bins
    assert len(_snapshot(day).pack()) < 12 * len(_snapshot(minute).pack())
    assert len(_snapshot(day).pack()) < 16_000


def test_start_up_samples_count_only_in_short_runs() -> None:
    busy_start = [100.0] * CpuStats.HEAD
    long_run = _cpu(busy_start + [20.0] * 100)
    assert long_run.saturated_fraction(90.0) == 0.0 and long_run.max == 100.0
    short_run = _cpu(busy_start + [20.0] * 2)
    assert short_run.saturated_fraction(90.0) == 5 / 7


def _merged(cpu: dict[str, CpuStats]) -> Merged:
    st = NameStats()
    st.statuses.update({"OK": 10})
    return Merged({"infer": st}, Counter(), cpu)


def test_a_saturated_worker_invalidates_the_run() -> None:
    plan = {k: dict(v) for k, v in DEFAULTS.items()}
    calm, busy = _cpu([50.0] * 100), _cpu([50.0] * 5 + [95.0] * 30 + [60.0] * 65)
    ok = generator_summary(plan, _merged({"w1": calm, "w2": calm}), {}, 1000.0)
    assert ok.valid and ok.workers["w1"].cpu_mean == 50.0
    bad = generator_summary(plan, _merged({"w1": calm, "w2": busy}), {}, 1000.0)
    assert not bad.valid
    assert bad.workers["w2"].saturated_fraction == 30 / 95
    (reason,) = bad.invalid_reasons
    assert "w2" in reason and "CPU-saturated" in reason and "32%" in reason
    # the threshold and the tolerated share come from the SLO file's validity section
    plan["validity"]["max_saturated_fraction"] = 0.5
    assert generator_summary(plan, _merged({"w1": calm, "w2": busy}), {}, 1000.0).valid
