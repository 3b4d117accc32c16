"""`modelsoak`: `locust -f <the installed loadgen/>` for users who installed the
package and have no checkout; every argument goes to Locust unchanged — except
`modelsoak compare A/summary.json B/summary.json [-o DIR]`, which compares two
finished runs (loadtest.compare).

    modelsoak --host grpc://127.0.0.1:8001 --headless --scenario latency
    modelsoak compare results/before/summary.json results/after/summary.json -o before-vs-after
    modelsoak --help      # Locust's options and ours

Locust prints --help before it imports the locustfile, so `locust -f loadgen/
--help` cannot show the options the locustfile registers; `modelsoak --help`
registers them first.
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
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["compare"]:
        from loadtest import compare

        return compare.main(args[1:])
    from locust.main import main as locust_main  # it patches the process with gevent: only for a run

    if not any(a in ("-f", "--locustfile") or a.startswith("--locustfile=") for a in args):
        args = ["-f", str(locustfile_dir()), *args]
    if any(a in ("-h", "--help") for a in args):
        # Locust exits after the help, before it imports the locustfile (which
        # registers the same options for a run).
        from locust import events

        from loadtest.flags import add_arguments

        events.init_command_line_parser.add_listener(add_arguments)
    sys.argv = ["modelsoak", *args]
    locust_main()  # exits the process with Locust's (and our) exit code
    return 0
