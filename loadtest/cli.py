"""`modelsoak`: `locust -f <the installed loadgen/>` for users who installed the
package and have no checkout; every argument goes to Locust unchanged.

    modelsoak --host grpc://127.0.0.1:8001 --headless --scenario latency
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def locustfile_dir() -> Path:
    """The folder Locust reads (`loadgen/`, holding only locustfile.py), from a
    checkout or from site-packages."""
    spec = importlib.util.find_spec("loadgen")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the loadgen folder (loadgen/locustfile.py) is not installed beside loadtest")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def main(argv: list[str] | None = None) -> int:
    from locust.main import main as locust_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-f", "--locustfile") or a.startswith("--locustfile=") for a in args):
        args = ["-f", str(locustfile_dir()), *args]
    sys.argv = ["modelsoak", *args]
    locust_main()  # exits the process with Locust's (and our) exit code
    return 0
