"""The sample outputs the documentation shows, made by running the real thing.

    python tools/sample_outputs.py          # run the demo, write docs/samples/demo.txt
                                            # and the README's copy between its markers

`shape(text)` is what a sample and a fresh run must share (the lines, the verdict
table's metrics and targets, with numbers, times, verdicts and the diagnosis left out):
tests/test_docs_samples.py compares a real run's shape with the checked-in one's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_SAMPLE = ROOT / "docs" / "samples" / "demo.txt"
README = ROOT / "README.md"
BEGIN, END = "<!-- sample: demo (tools/sample_outputs.py) -->", "<!-- /sample -->"


def run_demo(results_dir: Path, *args: str) -> tuple[int, str]:
    """The demo's printed output, its results folder shown as `results/`."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.demo", "--results-dir", str(results_dir), *args],
        capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
    )  # fmt: skip
    text = proc.stdout.replace(str(results_dir) + "/", "results/")
    return proc.returncode, "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def shape(text: str) -> list[str]:
    """The lines of a demo output without what varies from run to run."""
    out: list[str] = []
    in_table = False
    for line in text.splitlines():
        line = line.rstrip()
        if not line.strip():
            in_table = False
            continue
        if line.startswith("INVALID: "):  # the generator's health on a loaded machine
            continue
        if line.startswith("metric ") and line.rstrip().endswith("status"):
            in_table = True
            out.append(" ".join(line.split()))
            continue
        if in_table and re.search(r"\s(PASS|FAIL)$", line):
            cells = re.split(r"\s{2,}|\s(?=PASS$|FAIL$)", line.strip())
            out.append(f"row: {cells[0]} | {cells[1] if len(cells) > 1 else ''}")
            continue
        if line.startswith("diagnosis: "):  # what the evidence points at differs from run to run
            out.append("diagnosis: …")
            continue
        line = re.sub(r"modelsoak verdict: \w+", "modelsoak verdict: V", line)
        out.append(_NUMBER.sub("#", " ".join(line.split())))
    return out


def write_readme_sample(sample: str) -> None:
    text = README.read_text()
    if BEGIN not in text:
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n```\n{sample}```\n{END}{tail}")


def readme_sample() -> str | None:
    text = README.read_text()
    if BEGIN not in text:
        return None
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```").removesuffix("```").strip("\n") + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="modelsoak-samples-") as tmp:
        code, sample = run_demo(Path(tmp) / "results")
    if "modelsoak verdict:" not in sample:
        print(f"the demo printed no verdict (exit code {code}):\n{sample}", file=sys.stderr)
        return 1
    DEMO_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    DEMO_SAMPLE.write_text(sample)
    write_readme_sample(sample)
    print(f"wrote {DEMO_SAMPLE.relative_to(ROOT)} (demo exit code {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
