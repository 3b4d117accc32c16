"""LR schedules by name, and the lr_schedule check on real (short) runs: it passes what the schedule
did and fails a trace that departs from it, naming the step."""

from __future__ import annotations

import pytest
import torch

from training.checks import CheckContext
from training.checks.schedule import check_lr_schedule
from training.config import TrainConfig
from training.errors import SetupError
from training.optim import make_optimizer, make_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ctx(schedule: str, epochs: int = 3, kw: dict[str, float] | None = None) -> CheckContext:
    return CheckContext(
        TrainConfig(
            model="digits-cnn",
            epochs=epochs,
            max_steps_per_epoch=8,
            device="cpu",
            schedule=schedule,
            schedule_kw=kw or {},
        )
    )


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("constant", {}),
        ("step", {"step_size": 1, "gamma": 0.5}),
        ("cosine", {}),
        ("warmup_cosine", {"warmup_steps": 4}),
        ("onecycle", {"max_lr": 0.01}),
    ],
)
def test_schedule_trace_matches_its_definition(name: str, kw: dict[str, float]) -> None:
    ctx = _ctx(name, kw=kw)
    r = check_lr_schedule(ctx)
    assert r.status == "PASS", r.detail
    trace = ctx.main.step_lr
    assert len(trace) == 24
    if name == "step":
        assert trace[0] == 1e-3 and trace[8] == pytest.approx(5e-4) and trace[16] == pytest.approx(2.5e-4)
    if name == "cosine":
        assert trace[0] == 1e-3 and trace[-1] < trace[12] < trace[0]
    if name == "warmup_cosine":
        assert trace[0] == pytest.approx(2.5e-4) and trace[3] == pytest.approx(1e-3) and trace[-1] < 1e-4
    if name == "onecycle":
        assert r.evidence["peak_step"] == r.evidence["expected_peak_step"]


def test_plateau_reduces_the_lr_after_a_plateau() -> None:
    # A 50 % improvement is demanded each epoch: validation "plateaus" at once and the LR drops.
    ctx = _ctx("plateau", epochs=4, kw={"patience": 0, "factor": 0.5, "threshold": 0.5})
    r = check_lr_schedule(ctx)
    assert r.status == "PASS" and "reduced" in r.detail
    assert r.evidence["reductions_at_steps"] and r.evidence["reductions_at_steps"][0] % 8 == 0
    assert ctx.main.step_lr[-1] < ctx.main.step_lr[0]


def test_a_trace_that_departs_from_the_schedule_fails_naming_the_step() -> None:
    ctx = _ctx("step", kw={"step_size": 1, "gamma": 0.5})
    ctx.main.step_lr[10] *= 3  # as if something else had changed the LR mid-run
    r = check_lr_schedule(ctx)
    assert r.status == "FAIL" and r.evidence["first_wrong_step"] == 10


def test_bad_schedule_arguments_are_setup_errors() -> None:
    opt = make_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 0.1)
    with pytest.raises(SetupError, match="--schedule 'linear'"):
        make_schedule("linear", opt, 10, 2)
    with pytest.raises(SetupError, match="--warmup-steps 50"):
        make_schedule("warmup_cosine", opt, 10, 2, warmup_steps=50)
