"""`make stack` / `python -m exporters.stack`: Prometheus and a Pushgateway for a local run.

Starts Debian's `prometheus` and `prometheus-pushgateway` on 127.0.0.1 with a
generated configuration that scrapes:

- job `modelsoak-server`: our server's metrics port (127.0.0.1:8002);
- job `modelsoak-loadgen`: the Locust master's web UI (127.0.0.1:8089/metrics)
  and its headless metrics port (127.0.0.1:8090, `--metrics-port 8090`); only
  one of the two answers in a given run, so alerts look at the job as a whole;
- job `modelsoak-pushgateway`: the Pushgateway, with honor_labels so that the
  pushed job="modelsoak" and run_id labels survive;
- job `modelsoak-training`: a training run's metrics (`modelsoak-train bench
  --metrics-port 9647`);

and loads exporters/rules/modelsoak-alerts.yml and modelsoak-training-alerts.yml.
Data, logs, the generated configuration and a Grafana provisioning folder go
under results/stack/.
Ctrl-C or SIGTERM stops both.

`prometheus_config()` and `start_prometheus()` / `start_pushgateway()` are the
pieces the tests reuse.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server.netutil import port_in_use

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules" / "modelsoak-alerts.yml"
TRAINING_RULES = HERE / "rules" / "modelsoak-training-alerts.yml"
DASHBOARDS = HERE / "dashboards"
_LISTENING = re.compile(r'msg="Listening on" address=\[?([0-9a-fA-F.:]+?)\]?:(\d+)\b')


@dataclass
class Job:
    """One scrape job: a name, its targets (host:port), and options."""

    name: str
    targets: list[str]
    metrics_path: str = "/metrics"
    honor_labels: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def default_jobs(
    server: str = "127.0.0.1:8002",
    loadgen: tuple[str, ...] = ("127.0.0.1:8089", "127.0.0.1:8090"),
    pushgateway: str | None = "127.0.0.1:9091",
) -> list[Job]:
    jobs = [Job("modelsoak-server", [server]), Job("modelsoak-loadgen", list(loadgen))]
    if pushgateway:
        jobs.append(Job("modelsoak-pushgateway", [pushgateway], honor_labels=True))
    return jobs


def _seconds(value: float) -> str:
    """A Prometheus duration: whole milliseconds (Prometheus rejects "1.5s")."""
    ms = max(1, round(value * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def prometheus_config(
    jobs: list[Job],
    rule_files: list[Path] | None = None,
    scrape_interval_s: float = 5.0,
    evaluation_interval_s: float | None = None,
    scrape_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The prometheus.yml document (a dict; dump it with yaml.safe_dump)."""
    interval = _seconds(scrape_interval_s)
    timeout = _seconds(min(scrape_timeout_s or scrape_interval_s, scrape_interval_s))
    scrape_configs = []
    for job in jobs:
        static: dict[str, Any] = {"targets": list(job.targets)}
        if job.labels:
            static["labels"] = dict(job.labels)
        entry: dict[str, Any] = {
            "job_name": job.name,
            "metrics_path": job.metrics_path,
            "static_configs": [static],
        }
        if job.honor_labels:
            entry["honor_labels"] = True
        scrape_configs.append(entry)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": _seconds(evaluation_interval_s or scrape_interval_s),
        },
        "rule_files": [str(p) for p in (rule_files if rule_files is not None else [RULES])],
        "scrape_configs": scrape_configs,
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ManagedProcess:
    """A Prometheus-family binary; its bound address is read back from its log."""

    def __init__(self, name: str, cmd: list[str], log_path: Path) -> None:
        binary = shutil.which(cmd[0])
        if binary is None:
            raise FileNotFoundError(
                f"{cmd[0]} is not installed; run `make system-deps` "
                "(apt-get install prometheus prometheus-pushgateway)"
            )
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, *cmd[1:]], stdout=self._log, stderr=subprocess.STDOUT)
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_listening(self, timeout_s: float = 30.0) -> ManagedProcess:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            m = _LISTENING.search(self.log())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not listen within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def start_prometheus(
    config_path: Path, data_dir: Path, listen: str = "127.0.0.1:9090", retention: str = "15d"
) -> ManagedProcess:
    """Start `prometheus` (port 0 in `listen` picks a free one) and wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        "prometheus",
        f"--config.file={config_path}",
        f"--web.listen-address={listen}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--storage.tsdb.retention.time={retention}",
        "--web.enable-lifecycle",
    ]
    return ManagedProcess("prometheus", cmd, data_dir / "prometheus.log").wait_listening()


def start_pushgateway(data_dir: Path, listen: str = "127.0.0.1:9091") -> ManagedProcess:
    """Start `prometheus-pushgateway`, persisting pushed groups under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Debian's default persistence file is under /var/lib; keep ours with the stack.
    cmd = [
        "prometheus-pushgateway",
        f"--web.listen-address={listen}",
        f"--persistence.file={data_dir / 'pushgateway.data'}",
        "--persistence.interval=30s",
    ]
    return ManagedProcess("pushgateway", cmd, data_dir / "pushgateway.log").wait_listening()


def grafana_provisioning(folder: Path, prometheus_url: str) -> Path:
    """A Grafana provisioning folder: the Prometheus datasource and our dashboards."""
    ds = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "modelsoak Prometheus",
                "uid": "modelsoak-prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "jsonData": {"timeInterval": "5s"},
            }
        ],
    }
    dash = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "modelsoak",
                "folder": "modelsoak",
                "type": "file",
                "disableDeletion": False,
                "options": {"path": str(DASHBOARDS), "foldersFromFilesStructure": False},
            }
        ],
    }
    write_config(folder / "datasources" / "modelsoak.yml", ds)
    write_config(folder / "dashboards" / "modelsoak.yml", dash)
    return folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m exporters.stack", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--prometheus-port", type=int, default=9090, help="Prometheus port (default 9090; 0 picks one)")
    a("--pushgateway-port", type=int, default=9091, help="Pushgateway port (default 9091; 0 picks one)")
    a("--server", default="127.0.0.1:8002", help="our server's metrics address")
    a("--loadgen", action="append", help="Locust master metrics addresses (default 127.0.0.1:8089 and :8090)")
    a("--scrape-interval-s", type=float, default=5.0, help="scrape and rule evaluation period")
    a("--retention", default="15d", help="how long Prometheus keeps data")
    a("--dir", type=Path, default=Path("results/stack"), help="where data, logs and configs go")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for what, port in (("Prometheus", args.prometheus_port), ("Pushgateway", args.pushgateway_port)):
        if port_in_use("127.0.0.1", port):
            flag = f"--{what.lower()}-port"
            print(f"exporters.stack: {what} port {port} on 127.0.0.1 is already in use ({flag}); "
                  "expected a free port, or 0 to pick one", file=sys.stderr)  # fmt: skip
            return 2
    try:
        return _run(args, stop)
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"exporters.stack: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    base: Path = args.dir.resolve()
    gateway = start_pushgateway(base / "pushgateway", f"127.0.0.1:{args.pushgateway_port}")
    try:
        loadgen = tuple(args.loadgen or ("127.0.0.1:8089", "127.0.0.1:8090"))
        jobs = default_jobs(args.server, loadgen, f"127.0.0.1:{gateway.port}")
        # `modelsoak-train bench --metrics-port 9647` (training/monitor.py)
        jobs.append(Job("modelsoak-training", ["127.0.0.1:9647"]))
        config = write_config(
            base / "prometheus.yml",
            prometheus_config(jobs, [RULES, TRAINING_RULES], args.scrape_interval_s),
        )
        prom = start_prometheus(
            config, base / "prometheus", f"127.0.0.1:{args.prometheus_port}", args.retention
        )
        try:
            grafana = grafana_provisioning(base / "grafana-provisioning", prom.url)
            print(_banner(prom, gateway, jobs, config, grafana), flush=True)
            while not stop.wait(1.0):
                for proc in (prom, gateway):
                    if proc.proc.poll() is not None:
                        raise RuntimeError(
                            f"{proc.name} exited ({proc.proc.returncode}); see {proc.log_path}"
                        )
        finally:
            prom.stop()
    finally:
        gateway.stop()
    print("stack stopped", flush=True)
    return 0


def _banner(
    prom: ManagedProcess, gateway: ManagedProcess, jobs: list[Job], config: Path, grafana: Path
) -> str:
    scrape = "\n".join(f"    {j.name:<24} {', '.join(j.targets)}" for j in jobs)
    return f"""modelsoak stack running (Ctrl-C stops it)
  Prometheus   {prom.url}   (alerts: {prom.url}/alerts, targets: {prom.url}/targets)
  Pushgateway  {gateway.url}   (locust ... --pushgateway {gateway.url})
  config       {config}
  scraping
{scrape}
  Grafana: add a Prometheus datasource with URL {prom.url} and import
    {DASHBOARDS}/*.json, or start Grafana with the provisioning folder
    {grafana}
    e.g. grafana-server cfg:paths.provisioning={grafana}
    or   docker run --network host -v {grafana}:/etc/grafana/provisioning \\
           -v {DASHBOARDS}:{DASHBOARDS} grafana/grafana"""


if __name__ == "__main__":
    sys.exit(main())
