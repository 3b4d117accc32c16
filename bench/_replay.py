"""The master's report handling timed on its own: the reports a fleet sent,
replayed through the plugin's handler into a real `Run` in this process."""

from __future__ import annotations

import time
from typing import Any

from locust.env import Environment

from bench._fleet import Fleet
from bench._reports import USER_CLASS, stats_message
from loadtest import plugin
from loadtest.metrics import live_view
from loadtest.run import Run

_ROUNDS = 3


def merge_cost(fleet: Fleet) -> dict[str, Any]:
    """Milliseconds per report in `_take_report` (unpack + fold into the run)
    for reports as late as the run's last, from `fleet.n` workers, and the
    milliseconds of one `Run.merged()` over those workers (the summary, a
    phase check) and of the view a Prometheus scrape reads (loadtest.metrics.live_view)."""
    env = Environment(user_classes=[])
    run = Run(env, "master")
    run.token, run.run_id = fleet.token, fleet.run_id
    last = max(len(p.reports) for p in fleet.profiles) - 1
    messages = []
    for i in range(fleet.n):
        profile = i % len(fleet.profiles)
        k = min(last, len(fleet.profiles[profile].reports) - 1)
        rep = fleet.profiles[profile].reports[k]
        messages.append((f"w{i}", stats_message(rep, 4, rep.blob(0, [rep])), rep))
    per_report = []
    for _ in range(_ROUNDS):
        t0 = time.perf_counter()
        for worker, data, _rep in messages:
            plugin._take_report(run, worker, data)
        per_report.append((time.perf_counter() - t0) * 1000.0 / len(messages))
    views = []
    for _ in range(_ROUNDS):
        t0 = time.perf_counter()
        view = live_view(run)
        views.append((time.perf_counter() - t0) * 1000.0)
    scraped = sum(sum(c.values()) for c in view.statuses.values())
    merges = []
    for _ in range(_ROUNDS):
        t0 = time.perf_counter()
        merged = run.merged()
        merges.append((time.perf_counter() - t0) * 1000.0)
        total = sum(sum(st.statuses.values()) for st in merged.names.values())
        merged.release()
    return {
        "take_report_ms": round(min(per_report), 3),
        "merged_ms": round(min(merges), 1),
        "scrape_view_ms": round(min(views), 2),
        "reports_replayed": len(messages),
        "merged_requests": total,
        "scrape_view_requests": scraped,
        "user_class": USER_CLASS,
    }
