"""MemorySampler: real samples of this process, a bounded series, GPU reasons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.memory import MemorySampler


def wait_for(sampler: MemorySampler, n: int, timeout_s: float = 10.0) -> None:
    assert sampler.wait_for(n, timeout_s), f"only {sampler.taken} samples in {timeout_s} s"


def test_background_sampling_gives_a_growing_rss_series() -> None:
    sampler = MemorySampler(interval_s=0.02).start()
    try:
        wait_for(sampler, 3)
        first = len(sampler)
        wait_for(sampler, first + 2)
    finally:
        sampler.stop()
    times, rss = sampler.series("rss_bytes")
    assert len(times) == len(rss) == len(sampler) >= 5
    assert np.all(np.diff(times) >= 0) and np.all(rss > 0)
    latest = sampler.latest()
    assert latest["rss_bytes"] == rss[-1] and latest["timestamp"] == times[-1]
    assert "cpu_percent" in sampler.sources()
    # stopped means stopped: the thread is gone, so no sample can follow
    assert not sampler.running
    assert not sampler.wait_for(sampler.taken + 1, 3 * sampler.interval_s)


def test_series_is_bounded_and_oldest_first() -> None:
    sampler = MemorySampler(max_samples=5, nvml=False)
    for _ in range(12):
        sampler.sample()
    times, _ = sampler.series("rss_bytes")
    assert len(sampler) == 5 and len(times) == 5
    assert np.all(np.diff(times) >= 0) and times[-1] == sampler.latest()["timestamp"]
    assert sampler.series("no_such_source")[0].size == 0


def test_probes_are_recorded_and_a_failing_probe_is_skipped() -> None:
    sampler = MemorySampler(nvml=False)
    counter = iter(range(100))
    sampler.add_probe(lambda: {"model_bytes": float(next(counter))})
    sampler.add_probe(lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    for _ in range(3):
        sampler.sample()
    assert sampler.series("model_bytes")[1].tolist() == [0.0, 1.0, 2.0]
    assert sampler.latest()["rss_bytes"] > 0


def test_a_source_that_appears_later_has_only_its_own_samples() -> None:
    sampler = MemorySampler(nvml=False)
    sampler.sample()
    sampler.add_probe(lambda: {"late": 7.0})
    sampler.sample()
    assert sampler.series("late")[1].tolist() == [7.0]
    assert len(sampler.series("rss_bytes")[1]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without a GPU")
def test_gpu_status_gives_the_reason_without_a_gpu() -> None:
    sampler = MemorySampler()
    reason = sampler.gpu_status()
    assert reason is not None and ("NVML" in reason or "pynvml" in reason), reason
    assert sampler.gpus() == []
    values = sampler.sample()
    assert not any(k.startswith(("gpu", "torch_cuda")) for k in values)
    assert MemorySampler(nvml=False).gpu_status() is not None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        MemorySampler(interval_s=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_gpu_sources_on_a_gpu_machine() -> None:
    block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    sampler = MemorySampler()
    values = sampler.sample()
    assert values["torch_cuda_allocated_bytes"] >= 64 << 20
    del block
    reason = sampler.gpu_status()
    if reason is not None:  # torch sees the GPU but NVML does not (no nvidia-ml-py, no driver library)
        pytest.skip(f"the NVML half of this test needs NVML: {reason}")
    assert values["gpu0_memory_used_bytes"] > 0 and sampler.gpus()[0].uuid.startswith("GPU-")
