"""The folder Locust reads holds only the locustfile, and Locust finds in it
exactly one User class and one shape; the library behind it is a package with
public module names, and nothing outside it imports a private one."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import ROOT

# Locust's own file collection and class discovery, as `locust -f loadgen/` runs them
# (in a child process: importing the locustfile switches grpcio to gevent).
DISCOVER = """
import json, sys
from locust.argument_parser import parse_locustfile_paths
from locust.util.load_locustfile import load_locustfile
files = parse_locustfile_paths([sys.argv[1]])
users, shapes = {}, []
for f in files:
    u, s = load_locustfile(f)
    users.update(u)
    shapes += [type(x).__name__ for x in s]
print(json.dumps({"files": files, "users": sorted(users), "shapes": shapes}))
"""


def test_locust_finds_one_user_and_one_shape() -> None:
    out = subprocess.run(
        [sys.executable, "-c", DISCOVER, str(ROOT / "loadgen")],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p.rsplit("/", 1)[-1] for p in found["files"]] == ["locustfile.py"]
    assert found["users"] == ["InferenceUser"] and found["shapes"] == ["ScenarioShape"]
    assert sorted(p.name for p in (ROOT / "loadgen").glob("*.py")) == ["__init__.py", "locustfile.py"]


def _imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_private_load_generator_module_is_imported() -> None:
    assert not [p.name for p in (ROOT / "loadtest").glob("_*.py") if p.name != "__init__.py"]
    users = [
        p
        for p in ROOT.glob("*/*.py")
        if p.parts[-2] in ("tests", "bench", "exporters", "loadgen", "loadtest")
    ]
    for path in users:
        for name in _imports(str(path.relative_to(ROOT))):
            if name.startswith(("loadtest", "loadgen")):
                assert not any(part.startswith("_") for part in name.split(".")), (path, name)
