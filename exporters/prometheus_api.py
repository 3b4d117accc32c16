"""A small client of Prometheus' HTTP API (/api/v1), standard library only.

The stack, the tests and soak verdicts read Prometheus through it: instant and
range queries, targets, alerts and label values. Errors from Prometheus (a bad
expression, say) raise `PrometheusError` carrying Prometheus' own message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class PrometheusError(RuntimeError):
    """Prometheus answered with status "error" (or not at all)."""


class PrometheusAPI:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, Any] | list[tuple[str, str]] | None = None) -> Any:
        query = "?" + urllib.parse.urlencode(params or {}) if params else ""
        url = f"{self.base_url}{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            # Prometheus answers a bad query with 400 and a JSON body that says why.
            try:
                doc = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"GET {url}: {exc}") from exc
        if doc.get("status") != "success":
            raise PrometheusError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
        return doc.get("data")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=self.timeout_s) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """Instant query: {"resultType": ..., "result": [...]}."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        return dict(self._get("/api/v1/query", params))

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> dict[str, Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s}s"}
        return dict(self._get("/api/v1/query_range", params))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["groups"])

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        params = [("match[]", match)] if match else None
        return list(self._get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > end:
                raise PrometheusError(f"{self.base_url} was not ready within {timeout_s} s")
            time.sleep(0.1)


def has_data(result: dict[str, Any]) -> bool:
    """True when a query result holds at least one finite value."""
    kind, rows = result.get("resultType"), result.get("result")
    if kind == "scalar" or kind == "string":
        return rows is not None and _finite(rows[1])
    for row in rows or []:
        values = row.get("values") or ([row["value"]] if "value" in row else [])
        if any(_finite(v[1]) for v in values):
            return True
    return False


def _finite(text: Any) -> bool:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return False
    return value == value and value not in (float("inf"), float("-inf"))
