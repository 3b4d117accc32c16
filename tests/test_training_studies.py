"""Studies train for real: sweep cells in parallel worker processes that differ as training says
they should (and equal the same training run here), optimizers side by side, models compared."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import copy_training_cases
from training.cli import main
from training.config import TrainConfig
from training.runner import train
from training.studies import sensitivity
from training.summary import TrainingSummary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_sweep_cells_are_real_parallel_trainings(tmp_path: Path) -> None:
    code = main(
        [
            "sweep",
            "--lr",
            "1e-5,1e-2",
            "--batch-size",
            "32",
            "--optimizer",
            "adam",
            "--epochs",
            "2",
            "--seeds",
            "1",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--run",
            "sw",
        ]
    )
    assert code == 0
    s = TrainingSummary.read(tmp_path / "sw" / "training_summary.json")
    st = s.study
    assert s.kind == "sweep" and st["workers"] == 2 and len(st["runs"]) == 2
    pids = {r["pid"] for r in st["runs"]}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes
    slow, fast = (next(c for c in st["cells"] if c["lr"] == lr) for lr in (1e-5, 1e-2))
    # Two epochs of Adam at 1e-5 barely move from chance; at 1e-2 it learns the digits.
    assert slow["val_metric_mean"] < 0.4 < 0.8 < fast["val_metric_mean"]
    assert fast["val_loss_mean"] < slow["val_loss_mean"]
    # The cell is the same training as one run here with that config (same seed, one thread).
    here = train(replace(TrainConfig(**s.config), lr=1e-2, batch_size=32))
    assert here.final.val_loss == pytest.approx(fast["val_loss_mean"], rel=1e-5)
    assert st["sensitivity"]["lr"]["range"] == pytest.approx(
        fast["val_metric_mean"] - slow["val_metric_mean"]
    )
    md = (tmp_path / "sw" / "report.md").read_text()
    assert "| lr \\ batch size | 32 |" in md and "![sweep_heatmap](sweep_heatmap.svg)" in md
    assert (tmp_path / "sw" / "sweep_heatmap.svg").read_text().count("<rect") == 2


def test_sensitivity_is_the_range_of_each_factors_level_means() -> None:
    cells = [
        {"lr": 0.1, "batch_size": 32, "m": 0.9},
        {"lr": 0.1, "batch_size": 64, "m": 0.7},
        {"lr": 0.01, "batch_size": 32, "m": 0.5},
        {"lr": 0.01, "batch_size": 64, "m": 0.3},
    ]
    sens = sensitivity(cells, ["lr", "batch_size"], "m")
    assert sens["lr"]["level_means"] == {"0.1": pytest.approx(0.8), "0.01": pytest.approx(0.4)}
    assert sens["lr"]["range"] == pytest.approx(0.4) and sens["batch_size"]["range"] == pytest.approx(0.2)


def test_compare_optimizers_same_budget_with_time_to_target(tmp_path: Path) -> None:
    code = main(
        [
            "compare-optimizers",
            "--optimizers",
            "sgd,adam",
            "--epochs",
            "2",
            "--target",
            "0.5",
            "--workers",
            "1",
            "--max-steps-per-epoch",
            "20",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--run",
            "opt",
        ]
    )
    assert code == 0
    rows = {
        r["optimizer"]: r
        for r in TrainingSummary.read(tmp_path / "opt" / "training_summary.json").study["optimizers"]
    }
    assert set(rows) == {"sgd", "adam"} and rows["sgd"]["lr"] == 0.05 and rows["adam"]["lr"] == 1e-3
    for r in rows.values():
        curve = r["val_metric_per_epoch"]
        assert len(curve) == 3 and r["val_metric"] == curve[-1]
        hit = next((e for e in (1, 2) if curve[e] >= 0.5), None)
        assert r["target_epoch"] == hit
        assert (r["target_seconds"] is None) == (hit is None)
    assert rows["sgd"]["val_metric_per_epoch"] != rows["adam"]["val_metric_per_epoch"]
    assert "optimizer_curves.svg" in (tmp_path / "opt" / "report.md").read_text()


@pytest.mark.slow
def test_compare_models_measures_size_memory_and_speed(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    copy_training_cases(folder)
    code = main(
        [
            "compare",
            "--model",
            "digits-cnn",
            "--model",
            f"{folder}/training_cases.py:deep_sigmoid",
            "--data",
            "digits-cnn",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "30",
            "--inference-batches",
            "1,8",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--run",
            "cmp",
        ]
    )
    assert code == 0
    models = TrainingSummary.read(tmp_path / "cmp" / "training_summary.json").study["models"]
    cnn, sig = models
    # Parameter counts, from the layer shapes: conv 1→16 and 16→32 (3x3), fc 512→64→10.
    assert cnn["params"] == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)
    assert sig["params"] == 10 * (64 * 64 + 64) + (64 * 10 + 10)
    for m in models:
        assert m["memory_kind"] == "rss_growth" and m["peak_memory_bytes"] > 0
        assert m["train_samples_per_s"] > 0 and set(m["inference_samples_per_s"]) == {"1", "8"}
    assert cnn["val_metric"] > sig["val_metric"]  # the sigmoid stack stays at chance
    assert "infer b=8 samples/s" in (tmp_path / "cmp" / "report.md").read_text()
    assert (tmp_path / "cmp" / "inference_throughput.svg").read_text().count("<polyline") == 2
