"""Models side by side: validation metric, parameters, measured peak memory, training and
inference samples/s. Each model runs alone in a fresh process, so memory and speed are its own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any

import torch

from training.config import TrainConfig
from training.errors import InvalidRun, SetupError


@dataclass
class ModelResult:
    model: str
    params: int
    trainable_params: int
    val_metric: float | None
    val_loss: float
    metric: str | None
    train_samples_per_s: float
    inference_samples_per_s: dict[int, float]
    peak_memory_bytes: int
    memory_kind: str  # cuda_max_allocated, or rss_growth (sampled every 2 ms above the RSS before the model)
    train_seconds: float
    diverged_at_step: int | None


class RssPeak:
    """Samples this process's RSS every 2 ms on a thread; `peak` is the highest seen."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak - self.start


def inference_throughput(
    model: torch.nn.Module,
    sample: torch.Tensor,
    batch: int,
    device: torch.device,
    min_seconds: float = 0.3,
    min_iters: int = 5,
) -> float:
    """Samples/s of eval-mode forward passes at one batch size (after 3 warm-up passes)."""
    x = sample.unsqueeze(0).repeat(batch, *([1] * sample.dim())).to(device)
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        sync()
        iters, t0 = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - t0 < min_seconds:
            model(x)
            iters += 1
        sync()
        elapsed = time.perf_counter() - t0
    return batch * iters / elapsed


def measure_model(cfg: TrainConfig, inference_batches: list[int]) -> ModelResult:
    from training.runner import prepare, train

    p0 = prepare(replace(cfg, epochs=1, max_steps_per_epoch=1))  # data loaded before the baseline RSS
    data = (p0.train, p0.val)
    del p0
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    watch = RssPeak()
    p = prepare(cfg, data)
    res = train(p, record_updates=False, keep_params=False)
    sample = p.val[0][0]
    speeds = {b: inference_throughput(p.model, sample, b, p.device) for b in inference_batches}
    growth = watch.stop()
    peak, kind = (torch.cuda.max_memory_allocated(), "cuda_max_allocated") if cuda else (growth, "rss_growth")
    n = sum(q.numel() for q in p.model.parameters())
    nt = sum(q.numel() for q in p.model.parameters() if q.requires_grad)
    return ModelResult(
        cfg.model,
        n,
        nt,
        res.final.val_metric,
        res.final.val_loss,
        res.metric,
        res.train_samples / res.train_seconds if res.train_seconds else 0.0,
        speeds,
        int(peak),
        kind,
        res.train_seconds,
        res.nonfinite.step if res.nonfinite else None,
    )


def compare(base: TrainConfig, models: list[str], inference_batches: list[int]) -> list[ModelResult]:
    """One fresh process per model, one after another (speeds are not measured under contention)."""
    if len(models) < 1:
        raise SetupError("compare: give at least one --model")
    if any(b < 1 for b in inference_batches):
        raise SetupError(f"--inference-batches {inference_batches}: batch sizes must be >= 1")
    from training.runner import prepare

    for m in models:  # bad specs fail here, as setup errors, before any worker starts
        prepare(replace(base, model=m, epochs=1, max_steps_per_epoch=1))
    out = []
    ctx = get_context("spawn")
    for m in models:
        # The worker uses this process's thread count (so --threads applies to it too).
        with ProcessPoolExecutor(
            max_workers=1,
            mp_context=ctx,
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        ) as pool:
            try:
                out.append(pool.submit(measure_model, replace(base, model=m), inference_batches).result())
            except SetupError:
                raise
            except Exception as e:
                raise InvalidRun(f"compare: measuring {m} crashed: {type(e).__name__}: {e}") from e
    return out


def to_rows(results: list[ModelResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
