"""The documentation site builds offline and strict (`make docs`): a warning, a
broken link or a page missing from the navigation fails it, and its reference
pages are made from the code while it builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from loadtest.flags import FLAGS
from loadtest.results import Summary
from tests.conftest import ROOT


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True, text=True, timeout=120, check=False, cwd=config.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def test_the_site_builds_strict_with_no_warning(tmp_path: Path) -> None:
    run = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "WARNING" not in log and "ERROR" not in log, log
    options = (tmp_path / "site" / "reference" / "options" / "index.html").read_text()
    for f in FLAGS:
        assert f"<code>{f.flag}</code>" in options and f"<code>{f.env_var}</code>" in options, f.flag
    schema = (tmp_path / "site" / "reference" / "summary" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in schema for name in Summary.__dataclass_fields__)
    assert "<!-- reference:" not in options + schema and "made from the code when" not in options
    getting_started = (tmp_path / "site" / "getting-started" / "index.html").read_text()
    assert "modelsoak verdict:" in getting_started  # the demo's sample output, included


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    (copy / "tools").mkdir()
    for name in ("docs_hooks.py", "reference.py"):
        shutil.copy(ROOT / "tools" / name, copy / "tools" / name)
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", copy / "README.md")  # pages may include from it
    page = copy / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    run = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert run.returncode != 0
    assert "no-such-page.md" in run.stdout + run.stderr


def test_every_plan_key_has_its_note_in_the_reference() -> None:
    """A key added to loadtest.plan.DEFAULTS without a comment beside it would be
    a bare row in the plan reference."""
    from loadtest.plan import DEFAULTS
    from tools import reference

    notes = reference._plan_comments()
    missing = [f"{s}.{k}" for s, keys in DEFAULTS.items() for k in keys if not notes.get(f"{s}.{k}")]
    missing += [s for s in DEFAULTS if not notes.get(s)]
    assert missing == [], missing


def test_the_readme_links_to_pages_that_exist() -> None:
    import re

    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert local and [link for link in local if not (ROOT / link).exists()] == []
