"""The documentation's reference pages, made from the definitions the code runs on.

The docs build (docs/hooks.py) calls `page(name)` for every `<!-- reference: NAME -->`
marker, so a reference page cannot drift from the code: the load generator's
options (loadtest.flags), the server's flags (server.cli, server.config), the
test-plan keys (loadtest.plan.DEFAULTS), the Prometheus metrics (every metric
family the collectors build) and summary.json (the dataclasses of loadtest.results).

    python tools/reference.py options      # one page's markdown on stdout
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, or loaded by the docs build
    sys.path.insert(0, str(ROOT))

from loadtest import plan as plans  # noqa: E402
from loadtest import results  # noqa: E402
from loadtest.flags import FLAGS, GROUPS  # noqa: E402


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(value: object) -> str:
    shown = json.dumps(value, default=str) if not isinstance(value, str) else repr(value) if value == "" else value
    return f"`{shown}`"


# -- the load generator's options ---------------------------------------------------------


def options() -> str:
    out = [
        "Every option is a command-line flag of `locust -f loadgen/` (and of `modelsoak`), reads the "
        "environment variable beside it, and can stand in `locust.conf` under its flag's name. "
        "`modelsoak --help` lists them beside Locust's own (`locust -f loadgen/ --help` cannot: Locust prints "
        "its help before it imports the locustfile that adds them).",
        "",
        "The web UI shows those with a label in the *web UI* column among its custom parameters. Locust "
        "names each field after its flag and lists the fields alphabetically, so each field's text begins "
        "with its group and label, e.g. *Open loop › Rate ramp-up (s): …*. The others are set per process, "
        "on the command line or in the environment, for the reason given.",
        "",
    ]
    for group in GROUPS:
        out += [f"## {group}", "", "| flag | environment | default | web UI | meaning |", "|---|---|---|---|---|"]
        for f in (f for f in FLAGS if f.group == group):
            default = "off" if f.is_switch else _code(f.default)
            choices = f" (one of {', '.join(f'`{c}`' for c in f.choices)})" if f.choices else ""
            plan = f" Plan key: `{f.plan_key}`." if f.plan_key else ""
            ui = f"**{f.label}**" if f.in_web_ui else f"not in the web UI: {f.web_ui}"
            out.append(
                f"| `{f.flag}` | `{f.env_var}` | {default} | {_cell(ui)} | {_cell(f.help)}{choices}.{plan} |"
            )
        out.append("")
    return "\n".join(out)


# -- the server's flags -------------------------------------------------------------------


def _attribute_docs(path: Path, class_name: str) -> dict[str, str]:
    """The docstrings under a class's fields (pydantic settings keep one under each)."""
    tree = ast.parse(path.read_text())
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            body = node.body
            for field, doc in itertools.pairwise(body):
                if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                        and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                        and isinstance(doc.value.value, str)):  # fmt: skip
                    docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


# Flags that are not settings of their own: the settings they fill.
_SERVER_FLAG_SETTING = {"param": "params", "input": "inputs", "output": "outputs", "no_probes": "probes"}


def server_flags() -> str:
    from server.cli import build_parser
    from server.config import ServerSettings

    docs = _attribute_docs(ROOT / "server" / "config.py", "ServerSettings")
    fields = ServerSettings.model_fields
    out = [
        "`modelsoak-server` (or `python -m server`). Every setting also reads from its environment "
        "variable; a flag given on the command line wins.",
        "",
        "| flag | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for action in build_parser()._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        setting = _SERVER_FLAG_SETTING.get(action.dest, action.dest)
        if setting in fields:
            env = f"`MODELSOAK_SERVER_{setting.upper()}`"
            default = _code(fields[setting].get_default(call_default_factory=True))
            meaning = docs.get(setting) or action.help or ""
            if setting != action.dest:
                meaning = f"{action.help}; {meaning}"
        else:
            env, default, meaning = "", "", action.help or ""
        out.append(f"| `{flag}` | {env} | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(out) + "\n"


def _help(action: argparse.Action) -> str:
    """An argparse help with its %(default)s-style fields filled, as --help shows it."""
    try:
        return (action.help or "") % vars(action)
    except (KeyError, TypeError, ValueError):
        return action.help or ""


def training_flags() -> str:
    from training.cli import build_parser

    out = ["`modelsoak-train COMMAND`: every command's flags, from the parser the command line goes through.", ""]
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, sub in action.choices.items():
            out += [f"## `{name}`", ""]
            if helps.get(name):
                out += [str(helps[name]), ""]
            out += ["| flag | default | meaning |", "|---|---|---|"]
            for a in sub._actions:
                if not a.option_strings or isinstance(a, argparse._HelpAction):
                    continue
                flags = ", ".join(f"`{f}`" for f in a.option_strings)
                default = "" if a.default in (None, argparse.SUPPRESS) else _code(a.default)
                choices = f" (one of {', '.join(f'`{c}`' for c in a.choices)})" if a.choices else ""
                out.append(f"| {flags} | {_cell(default)} | {_cell(_help(a))}{choices} |")
            out.append("")
    return "\n".join(out)


# -- the test plan ------------------------------------------------------------------------


def _plan_comments() -> dict[str, str]:
    """The comments beside DEFAULTS' keys in loadtest/plan.py, keyed "section.key"
    (a comment above a section names the section itself)."""
    lines = (ROOT / "loadtest" / "plan.py").read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id == "DEFAULTS" and isinstance(node.value, ast.Dict)):  # fmt: skip
            continue
        for skey, sval in zip(node.value.keys, node.value.values, strict=True):
            if not (isinstance(skey, ast.Constant) and isinstance(skey.value, str) and isinstance(sval, ast.Dict)):
                continue
            out[skey.value] = _comment_above(lines, skey.lineno)
            for key in sval.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    line = lines[key.lineno - 1]
                    beside = line.split("#", 1)[1].strip() if "#" in line else ""
                    above = _comment_above(lines, key.lineno) if key.lineno != skey.lineno else out[skey.value]
                    out[f"{skey.value}.{key.value}"] = beside or above
    return out


def _comment_above(lines: list[str], lineno: int) -> str:
    text: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        text.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(text)


def plan() -> str:
    notes = _plan_comments()
    out = [
        "A test plan (`--slo-file plan.yaml`) overrides any of these keys; a key or section not listed "
        "here is refused before the run, naming it, and so is a value of another type. `null` turns an "
        "optional threshold off.",
        "",
        "```yaml",
        "latency: {p99_ms: 50, duration_s: 30}",
        "errors: {max_error_ratio: 0.001}",
        "```",
        "",
    ]
    for section, keys in plans.DEFAULTS.items():
        out += [f"## `{section}`", ""]
        if notes.get(section):
            out += [notes[section], ""]
        out += ["| key | default | note |", "|---|---|---|"]
        for key, value in keys.items():
            out.append(f"| `{section}.{key}` | {_code(value)} | {_cell(notes.get(f'{section}.{key}', ''))} |")
        out.append("")
    return "\n".join(out)


# -- Prometheus metrics -------------------------------------------------------------------

METRIC_SOURCES = {
    "server/metrics.py": "The inference server: `http://HOST:8002/metrics` (its metrics port; also `/stats` "
    "as JSON, `/profile`, `/healthz`)",
    "loadtest/metrics.py": "The Locust master: `/metrics` on the web UI (port 8089) or on `--metrics-port N` "
    "in headless runs, every family with the label `run_id`; and the summary pushed with `--pushgateway`",
    "training/monitor.py": "`modelsoak-train`'s metrics (its metrics port and Pushgateway; the run's labels "
    "are `run_id` and `rank`)",
}
_FAMILIES = {
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
}


@dataclasses.dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    source: str

    @property
    def exposed(self) -> str:
        """The name a scrape shows (prometheus_client adds _total to counters)."""
        return self.name + "_total" if self.kind == "counter" and not self.name.endswith("_total") else self.name


def _const(node: ast.expr | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def _names(tree: ast.AST) -> dict[str, list[str]]:
    """Names bound to a literal list of strings anywhere in a module (label lists)."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _const(node.value)
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                out[node.targets[0].id] = list(value)
    return out


def _labels(node: ast.expr | None, names: dict[str, list[str]]) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Name):
        return names.get(node.id, ["(the run's labels)"])
    if isinstance(node, ast.List | ast.Tuple):
        out: list[str] = []
        for item in node.elts:
            if isinstance(item, ast.Starred):
                out += _labels(item.value, names)
            elif isinstance(item, ast.Constant) and isinstance(item.value, str):
                out.append(item.value)
            else:
                out.append("…")
        return out
    return ["…"]


def _strings(tree: ast.AST) -> dict[str, str]:
    """Module-level names bound to a string (a metric prefix)."""
    body = tree.body if isinstance(tree, ast.Module) else []
    return {
        n.targets[0].id: n.value.value
        for n in body
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
        and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
    }  # fmt: skip


def _text(node: ast.expr, strings: dict[str, str], params: dict[str, str]) -> str | None:
    """A string expression of constants, module-level strings and a helper's arguments."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return params.get(node.id, strings.get(node.id))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, strings, params), _text(node.right, strings, params)
        return left + right if left is not None and right is not None else None
    return None


def _family_calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if fname in _FAMILIES and len(node.args) >= 2:
                yield node, _FAMILIES[fname]


def metric_definitions() -> Iterator[MetricDef]:
    """Every metric a collector or exporter builds with a literal name, also
    through a small helper called with literal names (training's gauge())."""
    for rel in METRIC_SOURCES:
        tree = ast.parse((ROOT / rel).read_text())
        names, strings = _names(tree), _strings(tree)
        helpers: dict[str, tuple[ast.FunctionDef, ast.Call, str]] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for call, kind in _family_calls(fn):
                    used = {n.id for n in ast.walk(call.args[0]) if isinstance(n, ast.Name)}
                    if used & {a.arg for a in fn.args.args}:
                        helpers[fn.name] = (fn, call, kind)
        sites: list[tuple[ast.Call, str, dict[str, str]]] = [(c, k, {}) for c, k in _family_calls(tree)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
                fn, call, kind = helpers[node.func.id]
                args = {a.arg: v for a, v in zip(fn.args.args, node.args, strict=False)}
                texts = {k: t for k, v in args.items() if (t := _text(v, strings, {})) is not None}
                sites.append((call, kind, texts))
        for node, kind, params in sites:
            name, doc = _text(node.args[0], strings, params), _text(node.args[1], strings, params)
            if name is None or doc is None:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            label_node = kw.get("labels") or kw.get("labelnames") or (node.args[2] if len(node.args) > 2 else None)
            labels = _labels(label_node, names)
            yield MetricDef(name, kind, " ".join(doc.split()), tuple(labels), rel)


def metrics() -> str:
    out = [
        "Every metric family below is listed from the code that builds it (a counter's name as a scrape "
        "shows it, with `_total`); on a GPU host the server also exposes Triton's `nv_gpu_*` names.",
        "",
    ]
    defs = list(metric_definitions())
    for rel, title in METRIC_SOURCES.items():
        out += [f"## {title}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        seen: set[str] = set()
        for m in defs:
            if m.source == rel and m.exposed not in seen:
                seen.add(m.exposed)
                labels = ", ".join(label if label.startswith("(") else f"`{label}`" for label in m.labels)
                out.append(f"| `{m.exposed}` | {m.kind} | {labels} | {_cell(m.help)} |")
        out.append("")
    return "\n".join(out)


# -- summary.json -------------------------------------------------------------------------


def _field_comments() -> dict[tuple[str, str], str]:
    """Comments beside (or just above) each dataclass field in loadtest/results.py."""
    lines = (ROOT / "loadtest" / "results.py").read_text().splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    line = lines[item.lineno - 1]
                    beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                    out[(node.name, item.target.id)] = beside or _comment_above(lines, item.lineno)
    return out


def _type_name(tp: Any, found: list[type]) -> str:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp not in found:
            found.append(tp)
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if origin in (list, tuple):
        return "list of " + ", ".join(_type_name(a, found) for a in typing.get_args(tp) if a is not Ellipsis)
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"map {_type_name(k, found)} → {_type_name(v, found)}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(_type_name(a, found) for a in args)
        return inner + " or null" if len(args) < len(typing.get_args(tp)) else inner
    if tp is Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def summary() -> str:
    comments = _field_comments()
    found: list[type] = [results.Summary]
    out = [
        f"The schema, version {results.SCHEMA_VERSION}, as the dataclasses of `loadtest/results.py` "
        "define it: one table per type, from the document's top level (`Summary`) down.",
        "",
    ]  # fmt: skip
    i = 0
    while i < len(found):
        cls = found[i]
        i += 1
        hints = typing.get_type_hints(cls)
        doc = " ".join((cls.__doc__ or "").split()) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        out += [f"## {cls.__name__}", ""]
        if doc:
            out += [doc, ""]
        out += ["| field | type | note |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            note = next((comments[(c.__name__, f.name)] for c in cls.__mro__ if (c.__name__, f.name) in comments), "")
            out.append(f"| `{f.name}` | {_type_name(hints[f.name], found)} | {_cell(note)} |")
        out.append("")
    return "\n".join(out)


PAGES: dict[str, Callable[[], str]] = {
    "options": options,
    "server-flags": server_flags,
    "training-flags": training_flags,
    "plan": plan,
    "metrics": metrics,
    "summary": summary,
}


def page(name: str) -> str:
    if name not in PAGES:
        raise KeyError(f"reference page {name!r}: expected one of {', '.join(PAGES)}")
    return PAGES[name]()


if __name__ == "__main__":
    print(page(sys.argv[1] if len(sys.argv) > 1 else "options"))
