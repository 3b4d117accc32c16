"""`modelsoak-train`: exit codes, setup errors that name what was wrong, the results folder
(summary read back through its types, report.md and report.html with the charts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from training.cli import main
from training.models import BUILTINS, infer_task, resolve_data, resolve_model
from training.summary import SCHEMA_VERSION, TrainingSummary

HERE = Path(__file__).resolve().parent
SVG = "{http://www.w3.org/2000/svg}"
ROOT = HERE.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_detached_model_report_names_the_parameters(
    cases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "check",
            "--model",
            f"{cases}:detached",
            "--data",
            "digits-cnn",
            "--epochs",
            "2",
            "--seeds",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--run",
            "r1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 3
    assert "FAIL    gradient_flow" in out and "backbone.0.weight" in out and "verdict: FAIL (exit 3)" in out
    folder = tmp_path / "r1"
    s = TrainingSummary.read(folder / "training_summary.json")
    assert s.schema_version == SCHEMA_VERSION and s.kind == "check" and s.exit_code == 3
    assert [c.name for c in s.checks][:2] == ["smoke", "gradient_flow"]
    grad = next(c for c in s.checks if c.name == "gradient_flow")
    assert grad.status == "FAIL" and grad.evidence["no_gradient_params"] == [
        "backbone.0.weight",
        "backbone.0.bias",
    ]
    pv = s.provenance
    assert (
        pv["torch_version"] == torch.__version__ and pv["device"]["type"] == "cpu" and pv["seeds"] == [0, 1]
    )
    assert len(pv["git_sha"]) >= 7
    assert len(s.history["epochs"]) == 3 and s.history["steps"] == len(s.history["step_lr"])
    md = (folder / "report.md").read_text()
    assert "| gradient_flow | FAIL |" in md and "![grad_norms](grad_norms.svg)" in md
    for chart in ("loss", "metric", "lr", "grad_norms"):
        root = ElementTree.parse(folder / f"{chart}.svg").getroot()  # well-formed SVG
        lines = list(root.iter(f"{SVG}polyline"))
        assert root.tag == f"{SVG}svg" and lines
    html = (folder / "report.html").read_text()
    assert html.count("<svg") == 4 and "class='FAIL'" in html
    # The JSON is plain JSON (readable without our types too).
    assert json.loads((folder / "training_summary.json").read_text())["verdict"] == "FAIL"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope.py:model", "--data", "digits-cnn"], "file nope.py does not exist"),
        (["--model", "{cases}:missing", "--data", "digits-cnn"], "has no function 'missing'"),
        (
            ["--model", "{cases}:not_a_module", "--data", "digits-cnn"],
            "returned str, expected a torch.nn.Module",
        ),
        (
            ["--model", "digits-cnn", "--data", "{cases}:not_datasets"],
            "expected (train_dataset, val_dataset)",
        ),
        (
            ["--model", "digits-cnn", "--data", "{cases}:twelve_classes"],
            "outputs 10 classes but the data has 12",
        ),
        (
            ["--model", "{cases}:rgb_model", "--data", "digits-cnn"],
            "does not fit --data: its forward pass on inputs of shape (1, 8, 8)",
        ),
        (["--model", "{cases}:detached"], "is not a built-in, so --data FILE.py:FUNC is required"),
        (["--model", "mnist"], "expected a built-in (digits-cnn, resnet18) or FILE.py:FUNC"),
        (["--checks", "smoke,speed"], "--checks: unknown speed"),
    ],
)
def test_setup_errors_exit_2_naming_what_was_wrong(
    cases: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "check",
        *[a.replace("{cases}", str(cases)) for a in args],
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_exit_code_and_message() -> None:
    script = Path(sys.executable).parent / "modelsoak-train"
    proc = subprocess.run(
        [str(script), "check", "--model", "missing.py:f", "--data", "digits-cnn"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "modelsoak-train: error: --model 'missing.py:f': file missing.py does not exist" in proc.stderr


def test_builtins_and_user_data_tasks(cases: Path) -> None:
    train, val = resolve_data(None, "digits-cnn")
    assert (len(train), len(val)) == (1437, 360)  # type: ignore[arg-type]  # scikit-learn's 1,797 digits, bundled, no download
    assert train[0][0].shape == (1, 8, 8) and float(train[0][0].max()) <= 1.0
    assert infer_task(None, "digits-cnn", train) == BUILTINS["digits-cnn"].task
    t = infer_task(f"{cases}:twelve_classes", "digits-cnn", resolve_data(f"{cases}:twelve_classes", "x")[0])
    assert t.kind == "classification" and t.num_classes == 12
    reg = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.randn(10))
    assert infer_task("x.py:f", "x.py:f", reg).kind == "regression"
    net = resolve_model("resnet18")
    assert sum(p.numel() for p in net.parameters()) == 11_689_512
    images, _ = resolve_data(None, "resnet18")
    x, y = images[0]
    assert x.shape == (3, 224, 224) and 0 <= int(y) < 1000
    assert torch.equal(images[0][0], images[0][0])  # made from the index: the same every time


def test_bench_subcommand_is_registered_when_present() -> None:
    from training.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)  # type: ignore[arg-type]
    assert {"check", "sweep", "compare-optimizers", "compare"} <= names
    try:
        import training.bench_cli  # noqa: F401
    except ImportError:
        assert "bench" not in names
    else:
        assert "bench" in names
