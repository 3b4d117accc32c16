"""`modelsoak`: `locust -f <the installed loadgen/>` for users who installed the
package and have no checkout; every argument goes to Locust unchanged.

    modelsoak --host grpc://127.0.0.1:8001 --headless --scenario latency
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from locust.main import main as locust_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-f", "--locustfile") or a.startswith("--locustfile=") for a in args):
        args = ["-f", str(Path(__file__).resolve().parent), *args]
    sys.argv = ["modelsoak", *args]
    locust_main()  # exits the process with Locust's (and our) exit code
    return 0
