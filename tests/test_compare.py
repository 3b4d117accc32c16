"""`modelsoak compare` refuses what is not a run's summary: exit 2, a message that
names the file and what was expected, no traceback. (Two real runs compared, and
their pages in a browser: tests/test_report_browser.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import cli

MODELSOAK = str(Path(sys.executable).parent / "modelsoak")


def test_the_command_names_a_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([MODELSOAK, "compare", "nowhere/summary.json", "also-missing.json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "A: nowhere/summary.json does not exist; expected a run's summary.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_that_is_not_a_summary_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.json").write_text(json.dumps({"schema_version": 2, "run_id": "x"}))
    Path("b.json").write_text("not json at all")
    assert cli.main(["compare", "a.json", "b.json"]) == 2
    assert "A: a.json: not a modelsoak summary.json (no 'totals')" in capsys.readouterr().err
    assert cli.main(["compare", "b.json", "a.json"]) == 2
    assert "A: b.json: not a readable summary.json" in capsys.readouterr().err
    Path("c.json").write_text(json.dumps({"schema_version": 1, "totals": {}}))
    assert cli.main(["compare", "c.json", "c.json"]) == 2
    assert "schema_version 1; this modelsoak reads schema_version" in capsys.readouterr().err


def test_a_bad_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", "only-one.json"])
    assert exc.value.code == 2 and "usage: modelsoak compare" in capsys.readouterr().err
