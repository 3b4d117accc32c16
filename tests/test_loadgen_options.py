"""One definition per load-generator option (loadtest.flags): the parser Locust
builds, `modelsoak --help`, the real web UI's fields, the environment
variables and the options reference of the docs all say the same."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.flags import FLAGS, GROUPS
from loadtest.plan import DEFAULTS
from tests.conftest import LOCUST, ROOT
from tests.loadgen_support import free_port, wait_until
from tools import reference

# Locust's own parser with our options on it, as `locust -f loadgen/` builds it
# (in a child process: importing Locust patches the interpreter for gevent).
PARSER = """
import json, sys
from locust import events
from locust.argument_parser import get_parser
from loadtest.flags import add_arguments
events.init_command_line_parser.add_listener(add_arguments)
parser = get_parser()
actions = [
    {"dest": a.dest, "flags": a.option_strings, "default": a.default, "help": a.help,
     "env_var": getattr(a, "env_var", None), "web_ui": getattr(a, "include_in_web_ui", None),
     "choices": list(a.choices) if a.choices else None,
     "group": next(g.title for g in parser._action_groups if a in g._group_actions)}
    for a in parser._actions
]
parsed = vars(parser.parse_args(sys.argv[1:]))
print(json.dumps({"actions": actions, "parsed": parsed}, default=str))
"""


def _parser(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PARSER, *args], capture_output=True, text=True, timeout=120, check=True,
        cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def test_the_parser_takes_every_option_from_its_definition() -> None:
    doc = _parser()
    ours = {a["dest"]: a for a in doc["actions"] if a["dest"] in {f.dest for f in FLAGS}}
    assert sorted(ours) == sorted(f.dest for f in FLAGS)
    for f in FLAGS:
        a = ours[f.dest]
        assert a["flags"] == [f.flag], f.flag
        assert a["default"] == f.default, f.flag
        assert a["env_var"] == f.env_var == "LOCUST_" + f.flag[2:].replace("-", "_").upper()
        assert a["help"].replace("%%", "%") == f.help, f.flag
        assert a["web_ui"] is f.in_web_ui, f.flag
        assert a["choices"] == (list(f.choices) if f.choices else None), f.flag
        assert a["group"] == f"modelsoak: {f.group}", f.flag
        assert f.label and f.help and f.group in GROUPS, f.flag
    assert doc["parsed"]["batch_size"] == 1 and doc["parsed"]["scenario"] == "none"


def test_flags_and_environment_variables_set_the_options() -> None:
    doc = _parser("--arrival-rate", "12.5", "--stable", "--scenario", "soak",
                  env={"LOCUST_BATCH_SIZE": "7", "LOCUST_SERIES_INTERVAL": "0.5"})  # fmt: skip
    parsed = doc["parsed"]
    assert parsed["arrival_rate"] == 12.5 and parsed["stable"] is True and parsed["scenario"] == "soak"
    assert parsed["batch_size"] == 7 and parsed["series_interval"] == 0.5


def test_plan_keys_of_options_are_plan_keys() -> None:
    keyed = [f for f in FLAGS if f.plan_key]
    assert keyed, "no option names its plan key"
    for f in keyed:
        section, key = f.plan_key.split(".")
        assert key in DEFAULTS[section], f.plan_key


def _words(text: str) -> str:
    """The text without its whitespace (argparse wraps lines, also after a hyphen)."""
    return re.sub(r"\s+", "", text)


def test_modelsoak_help_lists_every_option_under_its_group() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "modelsoak"), "--help"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    text = out.stdout
    for group in GROUPS:
        section = text.split(f"modelsoak: {group}:", 1)
        assert len(section) == 2, f"no group {group!r} in --help"
        body = _words(section[1].split("\n\n", 1)[0])
        for f in (f for f in FLAGS if f.group == group):
            assert f.flag in body, (group, f.flag)
            assert _words(f.help) in body, (group, f.flag)


@pytest.fixture
def web_ui(tmp_path: Path) -> Iterator[str]:
    """A real `locust -f loadgen/` web UI (no target needed until a run starts)."""
    port = free_port()
    log = tmp_path / "locust.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [LOCUST, "-f", str(ROOT / "loadgen"), "--web-host", "127.0.0.1", "--web-port", str(port),
             "--host", "grpc://127.0.0.1:1"],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), 60, "the web UI to answer", log.read_text, proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=5).close()
    except OSError:
        return False
    return True


def test_the_web_ui_shows_the_options_meant_for_it(web_ui: str) -> None:
    with urllib.request.urlopen(web_ui + "/", timeout=10) as resp:
        page = resp.read().decode()
    m = re.search(r"templateArgs = (\{.*?\});?\s*</script>", page, re.S)
    assert m, page[:2000]
    fields = json.loads(html.unescape(m.group(1)))["extra_options"]
    assert set(fields) == {f.dest for f in FLAGS if f.in_web_ui}
    for f in FLAGS:
        if f.in_web_ui:
            field = fields[f.dest]
            assert field["help_text"] == f"{f.group} › {f.label}: {f.help}", f.flag
            assert field["default_value"] == f.default, f.flag
            assert field["choices"] == (list(f.choices) if f.choices else None), f.flag
    for name in ("metrics_port", "master_timeout_s", "termination_log"):
        assert name not in fields


def _reference_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in reference.options().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = [c.replace("\\|", "|") for c in cells]
    return rows


def test_the_docs_options_reference_has_every_option_as_defined() -> None:
    rows = _reference_rows()
    assert list(rows) == [f.flag for g in GROUPS for f in FLAGS if f.group == g]
    for f in FLAGS:
        _, env, default, ui, meaning = rows[f.flag]
        assert env == f"`{f.env_var}`"
        assert default == ("off" if f.is_switch else f"`{reference._code(f.default)[1:-1]}`")
        assert ui == (f"**{f.label}**" if f.in_web_ui else f"not in the web UI: {f.web_ui}")
        assert meaning.startswith(f.help), f.flag
        if f.plan_key:
            assert f"`{f.plan_key}`" in meaning
