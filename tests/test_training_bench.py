"""`modelsoak-train bench`: the instrumented loop, the template table, verdicts and exit codes,
the bottleneck analysis, and the report. Real models, real data, real training (a few steps
where the model is large)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from training import bench_advice, bench_plan, bench_stats
from training.bench import BenchOptions, Workload, train_run
from training.bench_cli import main
from training.bench_probes import peak_tflops
from training.losses import make_loss
from training.models import DigitsCNN, resolve_data
from training.steptimer import PHASES, StepTimer

ROOT = Path(__file__).resolve().parent.parent


def _bench(tmp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["bench", *args, "--out", str(tmp)])
    return code, json.loads((tmp / "summary.json").read_text())


def _rows(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["metric"].split(" (")[0]: c for c in s["checks"]}


def test_steptimer_phases_cover_the_step_and_pause_ends_it() -> None:
    timer = StepTimer("cpu")
    x = torch.randn(64, 64)
    for _ in range(3):
        timer.start()
        for phase in range(5):
            x = x @ x.T / 64  # real work in every phase
            timer.mark(phase)
        timer.count(8)
    timer.pause()
    timer.start()
    timer.cancel()  # a step with no batch leaves no record
    rec = timer.records()
    assert len(rec) == 3 and list(rec.samples) == [8, 8, 8]
    phases = sum(rec.phase_s[p] for p in PHASES)
    assert np.all(phases > 0) and np.all(phases <= rec.step_s + 1e-9)


@pytest.fixture(scope="module")
def digits_default(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("digits")
    code, s = _bench(out, "--model", "digits-cnn", "--device", "cpu")
    return code, s, out


def test_digits_cnn_prints_the_template_table_gpu_row_not_measured(
    digits_default: tuple[int, dict[str, Any], Path],
) -> None:
    code, s, _ = digits_default
    rows = _rows(s)
    assert set(rows) == {
        "epoch time",
        "GPU utilisation",
        "peak training memory",
        "85% accuracy within 10 epochs",
    }
    assert rows["GPU utilisation"]["status"] == "NOT MEASURED"
    assert rows["GPU utilisation"]["actual"] == "not measured: no GPU"
    # Not measured is never a pass: the verdict cannot be PASS on a CPU with the template's GPU target.
    assert (s["verdict"], code) == ("INCOMPLETE", 4)
    assert rows["epoch time"]["status"] == "PASS"
    assert rows["peak training memory"]["status"] == "PASS"
    assert s["memory"]["source"] == "process RSS peak" and s["memory"]["peak_bytes"] > 50e6
    # digits-cnn reaches 85 % within its 10 epochs (it learns in a few)
    assert rows["85% accuracy within 10 epochs"]["status"] == "PASS"
    assert 1 <= s["accuracy"]["epochs_to_accuracy"] <= 10
    assert len(s["epochs"]) == 10 and all(e["complete"] for e in s["epochs"])
    assert s["epochs"][-1]["accuracy"] > 0.85


def test_digits_cnn_step_statistics_and_split(digits_default: tuple[int, dict[str, Any], Path]) -> None:
    _, s, out = digits_default
    st = s["steps"]
    # 1,437 samples / 32 per batch = 45 steps per epoch, 10 epochs, 5 warm-up excluded
    assert st["count"] == 45 * 10 - 5
    assert st["p50_ms"] <= st["p95_ms"] <= st["p99_ms"] <= st["max_ms"]
    assert set(st["split"]) == {*PHASES, "other"}
    assert sum(v["share"] for v in st["split"].values()) == pytest.approx(1.0, abs=0.02)
    assert st["split"]["forward"]["share"] > 0 and st["split"]["backward"]["share"] > 0
    # samples/s is what the steps' times say
    assert st["samples_per_s"] == pytest.approx(
        st["count"] * 32 / (st["mean_ms"] * st["count"] / 1e3), rel=0.05
    )
    assert s["flops"]["per_sample"] > 0 and s["flops"]["achieved_tflops"] > 0
    assert "pass --peak-tflops" in s["flops"]["mfu_reason"]
    report = (out / "report.md").read_text()
    assert "| GPU utilisation | > 80% | not measured: no GPU | NOT MEASURED |" in report
    assert "## Bottleneck analysis" in report
    for plot in ("throughput.svg", "step_split.svg", "memory.svg", "accuracy.svg"):
        assert (out / plot).read_text().startswith("<svg") and "no data" not in (out / plot).read_text()
    page = (out / "report.html").read_text()
    assert "<svg" in page and "<td>not measured: no GPU</td><td>NOT MEASURED</td>" in page


def test_plan_switches_the_gpu_target_off_and_the_run_passes(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("training:\n  min_gpu_utilization: null\n  max_epochs_to_accuracy: 10\n")
    code, s = _bench(
        tmp_path / "out", "--model", "digits-cnn", "--epochs", "6", "--plan", str(plan), "--seeds", "3"
    )
    assert (s["verdict"], code) == ("PASS", 0)
    assert "min_gpu_utilization" in s["not_judged"]
    acc = s["accuracy"]
    assert [x["seed"] for x in acc["seeds"]] == [0, 1, 2]
    assert "fastest and slowest dropped" in acc["rule"]
    times = sorted(x["time_to_accuracy_s"] for x in acc["seeds"])
    assert acc["time_to_accuracy_s"] == pytest.approx(times[1])  # 3 seeds: the middle one
    assert acc["spread"]["time_min_s"] == times[0] and acc["spread"]["time_max_s"] == times[2]


def test_a_target_that_cannot_hold_fails_with_exit_3(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("training:\n  max_epoch_time_s: 0.000001\n  min_gpu_utilization: null\n")
    code, s = _bench(tmp_path / "out", "--model", "digits-cnn", "--epochs", "2", "--plan", str(plan))
    assert (s["verdict"], code) == ("FAIL", 3)
    assert _rows(s)["epoch time"]["status"] == "FAIL"


def test_setup_errors_exit_2_and_name_what_was_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("training:\n  max_epoch_seconds: 3\n")
    assert main(["bench", "--model", "digits-cnn", "--plan", str(plan)]) == 2
    assert "unknown key training.max_epoch_seconds" in capsys.readouterr().err
    assert main(["bench", "--model", "nope", "--out", str(tmp_path)]) == 2
    assert "--model 'nope'" in capsys.readouterr().err
    assert main(["bench", "--model", "digits-cnn", "--batch-size", "0"]) == 2
    assert "--batch-size 0" in capsys.readouterr().err


def test_resnet18_gives_samples_per_s_and_the_step_split_at_224(tmp_path: Path) -> None:
    code, s = _bench(
        tmp_path, "--model", "resnet18", "--steps", "3", "--warmup-steps", "1", "--batch-size", "4"
    )
    st = s["steps"]
    assert st["count"] == 2 and st["samples_per_s"] > 0
    assert st["split"]["forward"]["share"] + st["split"]["backward"]["share"] > 0.5
    # ResNet-18 at 224x224: ~1.8 GMAC forward, so forward + backward ~ 3 x 3.6 GFLOP per sample
    assert 9e9 < s["flops"]["per_sample"] < 12e9
    rows = _rows(s)
    assert rows["epoch time"]["status"] == "NOT MEASURED" and "--steps" in rows["epoch time"]["actual"]
    assert code == 4


class SlowDigits(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Digits whose loading costs real host time per sample (a slow decoder)."""

    def __init__(self, base: Dataset[Any]) -> None:
        self.base = base

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = time.perf_counter() + 0.0005  # busy, like decoding, not a sleep
        while time.perf_counter() < end:
            pass
        x, y = self.base[i]
        return x, y


def test_the_loader_wait_is_measured_and_drives_the_advice() -> None:
    train, val = resolve_data(None, "digits-cnn")
    work = Workload("slow-digits", DigitsCNN, SlowDigits(train), val, make_loss("cross_entropy"))
    opts = BenchOptions(epochs=1, batch_size=32, warmup_steps=1, evaluate=False)
    run = train_run(work, opts)
    st = bench_stats.step_stats(bench_stats.measured(run.steps, 1))
    # Each sample costs at least 0.5 ms of the loader's time, 32 per batch: a lower
    # bound on the wait, whatever else the machine runs (the step itself is ~2 ms).
    assert st["split"]["data"]["mean_ms"] >= 32 * 0.5
    s = {
        "steps": st,
        "device": "cpu",
        "gpu": {"measured": False},
        "memory": {"peak_bytes": 1.0, "limit_bytes": 1e12},
    }
    advice = bench_advice.analyse(s, vars(opts), None)
    share = st["split"]["data"]["share"]
    data_advice = [a for a in advice["suggestions"] if a["trigger"].startswith("data loading takes")]
    # the suggestion follows from the measured share, and quotes it
    assert bool(data_advice) == (share >= bench_advice.DATA_SHARE)
    if data_advice:
        assert (
            f"{share:.0%}" in data_advice[0]["trigger"]
            and "--num-workers (now 0)" in data_advice[0]["suggestion"]
        )
    assert advice["dominant"] == max(st["split"], key=lambda k: st["split"][k]["share"])


def test_mlperf_mean_and_peak_table() -> None:
    assert bench_stats.mlperf_mean([5.0, 1.0, 3.0, 100.0, 4.0])[0] == pytest.approx(4.0)
    assert bench_stats.mlperf_mean([2.0, 4.0])[0] == 3.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "tf32") == 156.0
    assert peak_tflops("Some CPU", "fp32") is None


def test_plan_refuses_values_that_are_not_numbers(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("training:\n  target_accuracy: high\n")
    with pytest.raises(bench_plan.SetupError, match=r"training\.target_accuracy"):
        bench_plan.load_plan(plan)


@pytest.mark.parametrize("entry", ["modelsoak-train", "python -m training.bench_cli"])
def test_console_entry_points_print_the_table_and_exit_with_the_verdict(tmp_path: Path, entry: str) -> None:
    exe = [str(Path(sys.executable).parent / "modelsoak-train")] if entry == "modelsoak-train" else [
        sys.executable, "-m", "training.bench_cli"
    ]  # fmt: skip
    proc = subprocess.run(
        [*exe, "bench", "--model", "digits-cnn", "--epochs", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "GPU utilisation" in proc.stdout and "not measured: no GPU" in proc.stdout
    assert "verdict: INCOMPLETE (exit 4)" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_cuda_paths_events_nvml_amp_and_allocator_peak(tmp_path: Path) -> None:
    code, s = _bench(
        tmp_path,
        "--model",
        "resnet18",
        "--steps",
        "30",
        "--warmup-steps",
        "5",
        "--batch-size",
        "64",
        "--device",
        "cuda",
        "--amp",
        "bf16",
        "--pin-memory",
        "--channels-last",
        "--num-workers",
        "4",
    )
    st = s["steps"]
    assert st["timing"].startswith("cuda events")
    assert s["memory"]["source"] == "torch.cuda.max_memory_allocated" and s["memory"]["peak_bytes"] > 0
    assert all(v["share"] >= 0 for v in st["split"].values())
    if s["gpu"]["measured"]:
        assert 0 <= s["gpu"]["util_mean"] <= 1 and s["gpu"]["power_mean_w"] > 0
    else:
        assert "NVML" in s["gpu"]["reason"]
    if "mfu" in s["flops"]:
        assert 0 < s["flops"]["mfu"] < 1
    assert code in (0, 3, 4)
