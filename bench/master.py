"""`python -m bench master`: a real Locust master (`locust -f loadgen/ --master
--headless`, a soak run, Prometheus on --metrics-port) loaded by N simulated
workers (bench/_fleet.py) speaking Locust's protocol and sending our plugin's
reports at Locust's report interval (3 s), for N = 10, 100, 500.

Measured for each N over the steady part of the run (all users spawned, the
first two reports apart, the flush at the end apart):
- the master's CPU (psutil process times, user + system): percent of one core,
  and CPU milliseconds per worker report (all of the master's work divided by
  the reports: heartbeats, phase broadcasts and time series included);
- merge milliseconds per report: the master's own handler (`_take_report`:
  unpack and fold) timed in this process on the reports the fleet sent, and
  the time of the full merge the final summary takes, and of the view a
  Prometheus scrape (every 15 s, as the PodMonitor scrapes) reads from the
  folded counts; each scrape's wall time over HTTP;
- the master's RSS every second, its Theil-Sen growth after a warm-up, and
  RSS at the end over RSS after the warm-up;
- report latency: a report's send to the master's reply to the heartbeat
  sent right after it (the master handles a worker's messages in order), and
  the master's own event-loop lag from its summary, which tells the master's
  delays from the fleet's (the two share the machine's cores);
- the summary's request total against the sum of the workers' own.

Goals (values >= goal): at N = 500 the master fits in one core
(`cpu_headroom_500` = 100 % / the master's CPU percent), its RSS stays flat
(`rss_ratio_500` >= 0.95, no leak suspected), and the totals are exact.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench import _replay
from bench._fleet import Fleet
from bench._procs import LOCUST, ROOT
from bench._reports import Profile
from server.leak import LeakSettings, detect_leak
from server.netutil import free_port

USERS_PER_WORKER = 4
RATE_PER_WORKER = 500.0  # requests/s one worker measures (a few users on a fast model)
PROFILES = 16
SCRAPE_S = 15.0


def _master(tmp: Path, port: int, metrics: int, n: int, duration: float) -> subprocess.Popen[bytes]:
    plan = tmp / "plan.yaml"
    plan.write_text(f"soak: {{users: {n * USERS_PER_WORKER}, duration_s: {duration:g}}}\n")
    cmd = [
        LOCUST, "-f", str(ROOT / "loadgen"), "--master", "--headless", "--master-bind-host", "127.0.0.1",
        "--master-bind-port", str(port), "--expect-workers", str(n), "--expect-workers-max-wait", "120",
        "--host", "grpc://127.0.0.1:8001", "--scenario", "soak", "--slo-file", str(plan),
        "--results-dir", str(tmp), "--run-id", "run", "--only-summary", "--metrics-port", str(metrics),
        "-t", f"{int(duration + 120)}s",
    ]  # fmt: skip
    log = open(tmp / "master.log", "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)


class Watch:
    """The master's CPU time and RSS each second, and a Prometheus scrape every 15 s."""

    def __init__(self, pid: int, metrics: int, fleet: Fleet) -> None:
        self.proc = psutil.Process(pid)
        self.metrics = metrics
        self.fleet = fleet
        self.samples: list[tuple[float, float, float, int]] = []  # t, cpu s, rss, reports sent
        self.scrapes: list[tuple[float, float]] = []  # t, seconds
        self.spawned_at: float | None = None

    def sample(self) -> bool:
        try:
            c = self.proc.cpu_times()
            rss = self.proc.memory_info().rss
        except psutil.Error:
            return False
        t = time.monotonic() - self.fleet.started
        self.samples.append((t, c.user + c.system, float(rss), self.fleet.stats.reports))
        if self.spawned_at is None and self.fleet.stats.spawned >= self.fleet.n:
            self.spawned_at = t
        return self.proc.status() != psutil.STATUS_ZOMBIE

    def scrape(self) -> None:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=60) as r:
                r.read()
        except OSError:
            return
        self.scrapes.append((t0 - self.fleet.started, time.monotonic() - t0))


async def _drive(fleet: Fleet, watch: Watch, master: subprocess.Popen[bytes]) -> None:
    until = asyncio.Event()
    runner = asyncio.create_task(fleet.run(until))
    next_scrape = time.monotonic() + SCRAPE_S
    while master.poll() is None and watch.sample():
        if time.monotonic() >= next_scrape and watch.spawned_at is not None and not fleet.stats.flushed:
            next_scrape += SCRAPE_S
            threading.Thread(target=watch.scrape, daemon=True).start()
        await asyncio.sleep(1.0)
    until.set()
    await runner


def _steady(watch: Watch, fleet: Fleet, duration: float) -> dict[str, Any]:
    start = (watch.spawned_at or 0.0) + 2 * fleet.interval_s
    end = (watch.spawned_at or 0.0) + duration - 2.0
    pts = [s for s in watch.samples if start <= s[0] <= end]
    if len(pts) < 2:
        raise RuntimeError(f"no steady window: {len(watch.samples)} samples, spawned at {watch.spawned_at}")
    (t0, c0, _, r0), (t1, c1, _, r1) = pts[0], pts[-1]
    lat = np.array([ms for t, ms in fleet.stats.latencies_ms if start <= t <= end])
    scrapes = [s for t, s in watch.scrapes if start <= t <= end]
    return {
        "window_s": round(t1 - t0, 1),
        "reports": r1 - r0,
        "reports_per_s": round((r1 - r0) / (t1 - t0), 1),
        "master_cpu_percent": round(100.0 * (c1 - c0) / (t1 - t0), 1),
        "master_cpu_ms_per_report": round(1000.0 * (c1 - c0) / max(r1 - r0, 1), 3),
        "report_latency_ms": {
            q: round(float(np.percentile(lat, p)), 2) for q, p in (("p50", 50), ("p99", 99), ("max", 100))
        }
        if len(lat)
        else {},
        "scrape_s": {
            "n": len(scrapes),
            "median": round(float(np.median(scrapes)), 3) if scrapes else None,
            "max": round(max(scrapes), 3) if scrapes else None,
        },
    }


def _memory(watch: Watch, duration: float) -> dict[str, Any]:
    t = np.array([s[0] for s in watch.samples])
    v = np.array([s[2] for s in watch.samples])
    base = watch.spawned_at or 0.0
    warmup = base + min(120.0, duration / 3)
    end = base + duration
    keep = t <= end
    verdict = detect_leak(t[keep], v[keep], "master", LeakSettings(warmup_s=warmup, min_samples=10))
    after = v[(t >= warmup) & keep]
    return {
        "rss_start_mib": round(float(after[0]) / 2**20, 1) if len(after) else None,
        "rss_end_mib": round(float(after[-1]) / 2**20, 1) if len(after) else None,
        "rss_max_mib": round(float(v.max()) / 2**20, 1),
        "rss_ratio": round(float(after[0] / after[-1]), 4) if len(after) else 0.0,
        "growth_mib_per_hour": round(verdict.slope_bytes_per_hour / 2**20, 2) if verdict.samples else None,
        "leak_suspected": verdict.suspected,
        "verdict": verdict.reason,
        "rss_mib_every_10s": [
            [round(float(a), 1), round(float(b) / 2**20, 1)] for a, b in zip(t[::10], v[::10], strict=True)
        ],
    }


def one(n: int, duration: float) -> dict[str, Any]:
    """A master loaded by n simulated workers for `duration` s of soak."""
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        port, metrics = free_port(), free_port()
        master = _master(tmp, port, metrics, n, duration)
        profiles = [Profile(seed, "soak", RATE_PER_WORKER, 3.0) for seed in range(min(PROFILES, n))]
        fleet = Fleet(n, port, profiles)
        watch = Watch(master.pid, metrics, fleet)
        try:
            asyncio.run(_drive(fleet, watch, master))
            code = master.wait(60)
        finally:
            if master.poll() is None:
                master.kill()
        log = (tmp / "master.log").read_text()
        summary_path = tmp / "run" / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"the master (exit {code}) wrote no summary:\n{log[-3000:]}")
        summary = json.loads(summary_path.read_text())
        expected = sum(fleet.stats.final_requests.values())
        out: dict[str, Any] = {
            "workers": n,
            "master_exit": code,
            "verdict": summary["verdict"],
            "steady": _steady(watch, fleet, duration),
            # The master's own event-loop lag over its run (its summary): a report's latency
            # beyond this was the fleet's, which shares these cores.
            "master_loop": summary["generator"].get("master"),
            "memory": _memory(watch, duration),
            "merge": _replay.merge_cost(fleet),
            "requests_summary": summary["totals"]["requests"],
            "requests_workers": expected,
            "totals_match": summary["totals"]["requests"] == expected,
            "flushed": fleet.stats.flushed,
            "flushed_workers": len(fleet.stats.final_requests),
            "report_bytes_mean": round(fleet.stats.bytes_sent / max(fleet.stats.reports, 1)),
        }
        print(json.dumps({k: v for k, v in out.items() if k != "memory"}), flush=True)
        return out


def scaling(duration: float = 60.0, workers: tuple[int, ...] = (10, 100, 500)) -> dict[str, Any]:
    runs = [one(n, duration) for n in workers]
    out: dict[str, Any] = {
        "setup": {
            "duration_s": duration,
            "workers": list(workers),
            "users_per_worker": USERS_PER_WORKER,
            "requests_per_s_per_worker": RATE_PER_WORKER,
            "report_interval_s": 3.0,
            "profiles": PROFILES,
            "scrape_s": SCRAPE_S,
        },
        "runs": runs,
        "totals_exact": 1.0 if all(r["totals_match"] for r in runs) else 0.0,
        "goals": {"totals_exact": 1.0},
    }
    last = runs[-1]
    n = last["workers"]
    out[f"cpu_headroom_{n}"] = round(100.0 / max(last["steady"]["master_cpu_percent"], 1e-6), 3)
    out[f"rss_ratio_{n}"] = last["memory"]["rss_ratio"]
    out[f"leak_free_{n}"] = 0.0 if last["memory"]["leak_suspected"] else 1.0
    out["goals"].update({f"cpu_headroom_{n}": 1.0, f"rss_ratio_{n}": 0.95, f"leak_free_{n}": 1.0})
    if workers != (10, 100, 500) or duration != 60.0:
        out["result_name"] = f"master-{'-'.join(map(str, workers))}-{int(duration)}s"
    return out
