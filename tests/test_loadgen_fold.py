"""Histogram deltas (loadtest.fold): a master that folds each worker's deltas
once gets exactly what merging every worker's cumulative histograms gives,
reports or acknowledgements lost on the way included; and a real distributed
run's summary matches the workers' own raw records."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtest.fold import Folded, pack, unpack
from loadtest.recorder import Merged, Recorder, Snapshot, merge, new_hist, quantized_counts
from loadtest.summary import latency_ms
from server.netutil import free_port
from server.stats import PHASES
from tests.conftest import ServerProcess, master_cmd, worker_cmd


def _requests(rec: Recorder, rng: np.random.Generator, n: int) -> None:
    lat = rng.lognormal(np.log(2e6), 0.8, n).astype(np.int64)
    lat[rng.random(n) < 0.01] *= 50  # a slow tail over many HDR magnitudes
    for ns in lat.tolist():
        server = {p: int(ns * f) for p, f in zip(PHASES, (0.1, 0.05, 0.05, 0.5, 0.05, 0.8), strict=True)}
        name = "a" if ns % 3 else "b"
        rec.record(name, ns, "OK" if ns % 97 else "UNAVAILABLE", 2, 10, {**server, "batch_size": 2})


def _hists(m: Merged) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for name, st in m.names.items():
        for key, h in {"latency": st.latency, **st.server}.items():
            out[f"{name}/{key}"] = [
                (i.value_iterated_to, i.count_at_value_iterated_to) for i in h.get_recorded_iterator()
            ]
    return out


def test_pack_round_trip_keeps_every_bucket() -> None:
    ns = np.random.default_rng(1).lognormal(14, 3, 50_000).astype(np.int64)
    values, counts = quantized_counts(ns)
    from collections import Counter

    got_v, got_c = unpack(pack(Counter(dict(zip(values, counts, strict=True)))))
    assert got_v.tolist() == values and got_c.tolist() == counts
    slots = np.zeros(1 << 15, np.int64)
    folded = Folded()
    folded._add(slots, pack(Counter(dict(zip(values, counts, strict=True)))))
    direct, rebuilt = new_hist(), new_hist()
    for v, c in zip(values, counts, strict=True):
        direct.record_value(v, c)
    Folded.record(slots, rebuilt)
    assert rebuilt.get_total_count() == len(ns)
    for q in (1, 50, 90, 99, 99.9, 100):
        assert rebuilt.get_value_at_percentile(q) == direct.get_value_at_percentile(q)


def test_folded_deltas_equal_the_merge_of_cumulative_histograms() -> None:
    rng = np.random.default_rng(7)
    workers = {f"w{i}": Recorder() for i in range(3)}
    folded = Folded()
    kept: dict[str, Snapshot] = {}
    for interval in range(12):
        for i, (worker, rec) in enumerate(workers.items()):
            _requests(rec, rng, int(rng.integers(0, 400)))
            rec.add_cpu_sample(float(rng.uniform(10, 90)))
            snap = Snapshot.unpack(rec.report().pack())  # as it travels
            assert all(not n.latency and not n.server for n in snap.names.values())
            if (interval + i) % 4 == 1:
                continue  # the report is lost: its delta rides in the next one
            last = folded.fold(worker, snap.deltas)
            kept[worker] = snap.without_window()
            if (interval + i) % 5 != 2:  # otherwise the acknowledgement is lost
                rec.acknowledge(last)
    for worker, rec in workers.items():  # the final flush
        snap = Snapshot.unpack(rec.report().pack())
        folded.fold(worker, snap.deltas)
        kept[worker] = snap.without_window()
    got = merge(kept, folded)
    want = merge({w: rec.snapshot(take_window=False) for w, rec in workers.items()})
    assert _hists(got) == _hists(want)
    assert sum(st.latency.get_total_count() for st in got.names.values()) > 3000
    for name, st in want.names.items():
        g = got.names[name]
        assert (g.statuses, g.samples, g.server_sum_ns, g.server_count) == (
            st.statuses, st.samples, st.server_sum_ns, st.server_count)  # fmt: skip
        assert latency_ms(g) == latency_ms(st)
    assert sorted(got.cpu) == sorted(workers) and all(c.n == 12 for c in got.cpu.values())


@pytest.fixture(scope="module")
def mlp(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "mlp")


@pytest.mark.slow
def test_distributed_summary_matches_the_workers_raw_records(mlp: ServerProcess, tmp_path: Path) -> None:
    """Master and two workers (real processes): the summary's count and
    percentiles, from folded deltas, are those of the workers' raw latencies."""
    port = free_port()
    raw = tmp_path / "raw"
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {duration_s: 4, users: 2}\n")
    master = subprocess.Popen(
        master_cmd(
            mlp,
            tmp_path,
            port,
            2,
            "--scenario",
            "latency",
            "--slo-file",
            str(plan),
            "--latency-log",
            str(raw),
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = [subprocess.Popen(worker_cmd(port), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]  # fmt: skip
    out, _ = master.communicate(timeout=120)
    for w in workers:
        assert w.wait(60) == 0
    assert master.returncode == 0, out[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    logs = sorted(raw.glob("latencies-*.npy"))
    assert len(logs) == 2, list(raw.iterdir()) if raw.exists() else "no latency logs"
    ns = np.concatenate([np.load(p) for p in logs])
    own = new_hist()
    for v, c in zip(*quantized_counts(ns), strict=True):
        own.record_value(v, c)
    lat = summary["totals"]["latency_ms"]
    assert summary["totals"]["requests"] == len(ns) == lat["count"]
    for q, key in ((50.0, "p50"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9")):
        assert lat[key] == own.get_value_at_percentile(q) / 1000.0, (key, lat)
    assert lat["max"] == own.get_max_value() / 1000.0
