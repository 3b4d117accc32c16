"""--stable: a phase measures in windows (--stable-window-s, default 5 s; the
time slices of loadtest.slices, so a window closes at the first time-series
point after its length) until the last three agree within ±10 % of their mean
on throughput and on p99, perf_analyzer's rule, or until --stable-max-windows
windows have passed; a phase that never settles makes the run INVALID."""

from __future__ import annotations

from loadtest.results import Slice, Stability

TOLERANCE = 0.10
AGREE = 3


def _within(values: list[float], tolerance: float) -> bool:
    mean = sum(values) / len(values)
    return mean > 0 and all(abs(v - mean) <= tolerance * mean for v in values)


def agree(windows: list[Slice], tolerance: float = TOLERANCE) -> bool:
    """The last AGREE windows agree on throughput and p99."""
    last = windows[-AGREE:]
    if len(last) < AGREE or any(w.rps is None for w in last):
        return False
    return _within([float(w.rps or 0.0) for w in last], tolerance) and _within(
        [w.p99_ms for w in last], tolerance
    )


class StabilityWatch:
    """The windows of every phase, fed by the slicer as it closes them."""

    def __init__(self, max_windows: int, tolerance: float = TOLERANCE) -> None:
        self.max_windows = max_windows
        self.tolerance = tolerance
        self.windows: dict[str, list[Slice]] = {}
        self.decided: dict[str, int] = {}  # per phase: the windows there were when `done` first held

    def on_slice(self, s: Slice) -> None:
        if s.rps is not None:  # the slice of sends cut off at stop is no window
            self.windows.setdefault(s.phase, []).append(s)

    def stable(self, phase: str) -> bool:
        return agree(self.windows.get(phase, []), self.tolerance)

    def done(self, phase: str) -> bool:
        n = len(self.windows.get(phase, []))
        if phase not in self.decided and (self.stable(phase) or n >= self.max_windows):
            # Windows can close several at once (the series is written behind the requests):
            # never judge more than the most windows allowed.
            self.decided[phase] = min(n, self.max_windows)
        return phase in self.decided

    def results(self, phases: list[str]) -> list[Stability]:
        out = []
        for name in phases:
            windows = self.windows.get(name, [])
            # Judged on the windows up to the decision (those closing while the run stops, as
            # the series catches up with the last requests, came after it).
            judged = windows[: self.decided.get(name, len(windows))]
            settled = next(
                (i for i in range(AGREE, len(judged) + 1) if agree(judged[:i], self.tolerance)), None
            )
            if settled is not None:
                counted = list(range(settled - AGREE, settled))
                rps = sum(float(windows[i].rps or 0.0) for i in counted) / AGREE
                p99 = sum(windows[i].p99_ms for i in counted) / AGREE
                reason = f"the last {AGREE} windows agree within ±{self.tolerance:.0%} on throughput and p99"
                out.append(Stability(name, True, windows, counted, rps, p99, reason))
                continue
            reason = (
                f"{name}: not stable after {len(judged)} windows (at most {self.max_windows}): no {AGREE} in a row "
                f"agreed within ±{self.tolerance:.0%} on throughput and p99 ({_spread(judged)})"
            )
            out.append(Stability(name, False, windows, [], None, None, reason))
        return out


def _spread(windows: list[Slice]) -> str:
    last = [w for w in windows if w.rps is not None][-AGREE:]
    if not last:
        return "no window closed"
    rps = ", ".join(f"{w.rps:.1f}" for w in last)
    p99 = ", ".join(f"{w.p99_ms:.1f}" for w in last)
    return f"last windows: {rps} req/s; p99 {p99} ms"


def stability_lines(results: list[Stability]) -> list[str]:
    lines: list[str] = []
    for r in results:
        head = "stable" if r.stable else "NOT stable"
        lines += [
            f"{r.phase}: {head} — {r.reason}",
            "",
            "| Window | From s | To s | Req/s | p99 ms | Counted |",
        ]
        lines.append("|---|---|---|---|---|---|")
        for i, w in enumerate(r.windows):
            rps = "—" if w.rps is None else f"{w.rps:.1f}"
            mark = "yes" if i in r.counted else ""
            lines.append(f"| {i + 1} | {w.t_start:.1f} | {w.t_end:.1f} | {rps} | {w.p99_ms:.2f} | {mark} |")
        if r.stable and r.rps is not None and r.p99_ms is not None:
            lines += [
                "",
                f"Stable measurement (mean of the counted windows): {r.rps:.1f} req/s, p99 {r.p99_ms:.2f} ms",
            ]
        lines.append("")
    return lines
