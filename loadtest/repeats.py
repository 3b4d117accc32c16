"""--repeat N: the scenario's measured phases run N times in one Locust run, so a
number comes with its spread, and a regression against a baseline is a
significance test, not one number against another.

Each repeat is a copy of the phases with "#i" after the name (a plain run splits
-t into N). For every phase, its repeats give per metric (throughput and each
percentile) the mean, the coefficient of variation (sd / mean) and a 95 %
confidence interval of the mean (Student t, N - 1 degrees of freedom).

Against a --baseline that has repeats too, each metric's change is judged by
Welch's t-test (two-sided, unequal variances, Welch–Satterthwaite degrees of
freedom, as scipy.stats.ttest_ind(equal_var=False)); the 95 % CI of the change
is the difference's CI over the baseline mean. A change is significant when the
test's p-value is below regression.alpha (default 0.05). A significant change
beyond the plan's allowed regression fails the run; one that is within noise
does not, whatever its point estimate. Without repeats on both sides the
comparison is a single sample, and says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace

from scipy import stats

from loadtest.plan import Phase, Plan
from loadtest.results import Check, Comparison, PhaseResult, RepeatGroup, RepeatStat

CONFIDENCE = 0.95
METRICS = ("samples_per_s", "rps", "p50", "p90", "p95", "p99", "p99.9")
# The metrics the plan's regression thresholds judge, and which way is worse.
JUDGED = {"p99": ("max_p99_increase", +1), "samples_per_s": ("max_throughput_decrease", -1)}
_SUFFIX = re.compile(r"^(?P<base>.*)#(?P<i>\d+)$")


def expand(phases: list[Phase], n: int, run_time: float | None) -> list[Phase]:
    """The phases N times over, named "name#i"; a phase without a length (a plain
    run) gets -t / N. ValueError when a plain run has no -t to split."""
    if n <= 1:
        return phases
    out = []
    for i in range(1, n + 1):
        for p in phases:
            length = p.duration_s
            if length is None and not p.requests_per_user:
                if not run_time:
                    raise ValueError(
                        f"--repeat {n}: a plain run needs -t/--run-time to split into {n} repeats"
                    )
                length = float(run_time) / n
            out.append(replace(p, name=f"{p.name}#{i}", duration_s=length))
    return out


def base_name(name: str) -> tuple[str, int]:
    """("latency", 2) for "latency#2"; (name, 0) for a phase that is no repeat."""
    m = _SUFFIX.match(name)
    return (m["base"], int(m["i"])) if m else (name, 0)


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> RepeatStat:
    """Mean, sample sd, CV and the Student-t confidence interval of the mean."""
    xs = [float(v) for v in values]
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    cv = sd / mean if mean else None
    if n < 2:
        return RepeatStat(xs, mean, sd, cv, None, None)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return RepeatStat(xs, mean, sd, cv, mean - half, mean + half)


def _metric(ph: PhaseResult, key: str) -> float | None:
    if key in ("samples_per_s", "rps"):
        return float(getattr(ph, key))
    return ph.latency_ms.at(key) if ph.latency_ms is not None else None


def groups(phases: list[PhaseResult]) -> list[RepeatGroup]:
    """Each repeated phase with its metrics over the repeats (nothing for a run without)."""
    by: dict[str, list[PhaseResult]] = {}
    for ph in phases:
        base, i = base_name(ph.name)
        if i:
            by.setdefault(base, []).append(ph)
    out = []
    for base, reps in by.items():
        metrics = {}
        for key in METRICS:
            values = [v for ph in reps if (v := _metric(ph, key)) is not None]
            if len(values) == len(reps) and values:
                metrics[key] = describe(values)
        out.append(RepeatGroup(base, reps[0].kind, [ph.name for ph in reps], metrics))
    return out


def welch(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its confidence interval and the two-sided p-value of
    Welch's t-test (unequal variances)."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    diff = ma - mb
    if se2 == 0:
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    se = math.sqrt(se2)
    p = 2.0 * float(stats.t.sf(abs(diff) / se, df))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return diff, diff - half, diff + half, p


def _match(group: RepeatGroup, baseline: list[RepeatGroup]) -> RepeatGroup | None:
    same = [b for b in baseline if b.phase == group.phase]
    if same:
        return same[0]
    kind = [b for b in baseline if b.kind == group.kind]
    return kind[0] if len(kind) == 1 else None


def compare(plan: Plan, current: list[RepeatGroup], baseline: list[RepeatGroup]) -> list[Comparison]:
    """Every metric of every repeated phase against the baseline's repeats of it."""
    alpha = float(plan["regression"]["alpha"])
    out = []
    for g in current:
        b = _match(g, baseline)
        if b is None:
            continue
        for key in METRICS:
            cur, base = g.metrics.get(key), b.metrics.get(key)
            if cur is None or base is None or not base.mean:
                continue
            if len(cur.values) < 2 or len(base.values) < 2:
                change = cur.mean / base.mean - 1
                out.append(Comparison(key, g.phase, base.mean, cur.mean, change, None, None, None, False,
                                      "single sample"))  # fmt: skip
                continue
            diff, low, high, p = welch(cur.values, base.values)
            out.append(
                Comparison(
                    key,
                    g.phase,
                    base.mean,
                    cur.mean,
                    diff / base.mean,
                    low / base.mean,
                    high / base.mean,
                    p,
                    p < alpha,
                    "welch",
                )
            )
    return out


def describe_change(c: Comparison) -> str:
    """'p99 +14.0 % (95 % CI +9.0…+19.0 %), significant (p 0.003)' or '... within noise'."""
    text = f"{c.metric} {c.change:+.1%}"
    if c.ci_low is None or c.ci_high is None or c.p_value is None:
        return text + ", a single sample on one side: no significance test (use --repeat on both runs)"
    ci = f"{c.ci_low:+.1%}…{c.ci_high:+.1%}"
    verdict = "significant" if c.significant else "within noise"
    return f"{text} (95 % CI {ci}), {verdict} (Welch p {c.p_value:.3g})"


def regression_checks(plan: Plan, comparisons: list[Comparison]) -> list[Check]:
    """A significant change beyond the allowed regression fails; within noise it does not."""
    r = plan["regression"]
    out = []
    for c in comparisons:
        if c.metric not in JUDGED:
            continue
        limit_key, worse = JUDGED[c.metric]
        limit = float(r[limit_key])
        beyond = worse * c.change > limit
        sign = "+" if worse > 0 else "-"
        out.append(
            Check(
                f"regression {c.metric} {c.phase}",
                f"{c.metric} of {c.phase} vs baseline mean {c.baseline_mean:.3f}, over the repeats",
                f"{sign}{limit:.0%} at most, or within noise",
                describe_change(c),
                not (beyond and c.significant),
            )
        )
    return out


def report_lines(groups_: list[RepeatGroup], comparisons: list[Comparison]) -> list[str]:
    if not groups_:
        return []
    lines = [
        "## Repeats",
        "",
        "Mean over the repeats, coefficient of variation, and the 95 % CI of the mean (Student t).",
        "",
        "| Phase | Metric | Repeats | Mean | CV | 95 % CI |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups_:
        for key, st in g.metrics.items():
            cv = "n/a" if st.cv is None else f"{st.cv:.1%}"
            ci = "n/a" if st.ci_low is None else f"{st.ci_low:.3f} … {st.ci_high:.3f}"
            lines.append(f"| {g.phase} | {key} | {len(st.values)} | {st.mean:.3f} | {cv} | {ci} |")
    lines.append("")
    if comparisons:
        lines += ["Against the baseline's repeats (Welch's t-test):", ""]
        lines += [f"- {c.phase}: {describe_change(c)}" for c in comparisons] + [""]
    return lines
