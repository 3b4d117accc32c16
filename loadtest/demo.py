"""`make demo` / `python -m loadtest.demo`: the whole job on an embedded default.

Starts our server with a built-in model on free local ports, runs a short
headless load test of the performance-test template against it with
`locust -f loadgen/`, prints the verdict table and where the report is, stops
the server, and exits with the load test's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.cli import locustfile_dir

# Phases short enough for a demo, long enough to measure: about 50 s in all. The
# batch phase judges a p99, which needs 662 batches of 32 (loadtest.stats): 5 s
# gave about 350 on a 2-core CPU, and the run was INVALID.
SHORT_PLAN = """\
latency: {duration_s: 8}
throughput: {phase_s: 5}
batch: {duration_s: 12}
memory: {duration_s: 5}
concurrency: {users: 4, requests_per_user: 20}
"""


def _start_server(model: str, workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    port_file = workdir / "ports.json"
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - the server process writes it until stopped
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--model",
            model,
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--port-file",
            str(port_file),
            "--memory-interval-s",
            "0.5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300  # the first start exports the built-in model
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"the server did not start; its log:\n{(workdir / 'server.log').read_text()}")
        time.sleep(0.2)
    return proc, json.loads(port_file.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--model", default="mlp", help="built-in model to serve (see python -m server --list-models)"
    )
    p.add_argument("--scenario", default="template", help="load-generator scenario (default: the template)")
    p.add_argument("--results-dir", default="results", help="where the run's results folder goes")
    p.add_argument("--slo-file", default="", help="test plan; default: a short version of the template")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="modelsoak-demo-"))
    plan = Path(args.slo_file) if args.slo_file else workdir / "plan.yaml"
    if not args.slo_file:
        plan.write_text(SHORT_PLAN)
    print(f"starting the server with the built-in model '{args.model}' ...", flush=True)
    server, ports = _start_server(args.model, workdir)
    try:
        print(
            f"server on grpc://127.0.0.1:{ports['grpc']}, metrics on http://127.0.0.1:{ports['metrics']}",
            flush=True,
        )
        run_id = time.strftime("demo-%Y%m%d-%H%M%S")
        run_dir = Path(args.results_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        print(
            f"running the '{args.scenario}' scenario (headless Locust, log in {run_dir / 'locust.log'}) ...",
            flush=True,
        )
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile_dir()),
            "--headless",
            "--only-summary",
            "--host",
            f"grpc://127.0.0.1:{ports['grpc']}",
            "--scenario",
            args.scenario,
            "--slo-file",
            str(plan),
            "--server-metrics-url",
            f"http://127.0.0.1:{ports['metrics']}",
            "--results-dir",
            args.results_dir,
            "--series-interval",
            "1",
            "--run-id",
            run_id,
        ]
        with open(run_dir / "locust.log", "wb") as log:
            code = subprocess.call(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    summary = run_dir / "summary.json"
    if summary.exists():
        from loadtest.report import verdict_table
        from loadtest.results import Summary

        print(verdict_table(Summary.read(summary), run_dir))
    else:
        print((run_dir / "locust.log").read_text()[-3000:])
    print(f"exit code {code} (0 every SLO holds, 3 an SLO is broken, 4 invalid run, 2 setup error)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
