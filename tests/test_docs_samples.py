"""The sample outputs the docs and the README show are a real run's
(tools/sample_outputs.py writes them): a fresh demo prints the same lines, the
same verdict-table rows and targets; only numbers, times and verdicts differ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import sample_outputs
from tools.sample_outputs import DEMO_SAMPLE, readme_sample, run_demo, shape

DIFFERENT_TABLE = """\
modelsoak verdict: PASS (exit code 0)

metric                                  target                 actual                       status
failed requests / requests              <= 0.00%               0.00% (0 of 11346)           PASS
p95 latency, batch 1, warm-up excluded  < 100 ms               16.1 ms                      PASS
"""


def test_the_shape_keeps_rows_and_targets_and_drops_the_numbers() -> None:
    sample = DEMO_SAMPLE.read_text()
    rows = [line for line in shape(sample) if line.startswith("row: ")]
    assert "row: failed requests / requests | <= 0.00%" in rows
    assert len(rows) >= 5
    other_run = re.sub(r"\d+\.\d+(/s| ms)", r"1.5\1", sample).replace("verdict: PASS", "verdict: FAIL")
    assert other_run != sample and shape(other_run) == shape(sample)
    assert shape(DIFFERENT_TABLE) != shape(DIFFERENT_TABLE.replace("p95", "p99"))


def test_the_readme_shows_the_checked_in_sample() -> None:
    shown = readme_sample()
    if shown is not None:  # the README links to the docs instead of showing one
        assert shown == DEMO_SAMPLE.read_text()


@pytest.mark.slow
def test_a_fresh_demo_prints_what_the_sample_shows(tmp_path: Path) -> None:
    code, printed = run_demo(tmp_path / "results")
    assert "modelsoak verdict:" in printed, printed
    assert shape(printed) == shape(DEMO_SAMPLE.read_text()), (
        f"the demo's output no longer has the sample's shape: run {sample_outputs.__file__}\n{printed}"
    )
    assert code in (0, 3, 4), printed
