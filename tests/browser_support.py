"""Headless Chromium (Debian's package) driven over the DevTools protocol: open a
page, collect its console errors and uncaught exceptions, evaluate JavaScript,
take a full-page screenshot (tests/test_report_browser.py)."""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1200


class Chromium:
    """One headless browser process; `open` gives a fresh page (tab) each time."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        assert CHROMIUM is not None
        self.timeout = timeout
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--hide-scrollbars", "--remote-debugging-port=0",
                f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        while True:  # Chromium prints its DevTools address on stderr once it listens
            line = lines.get(timeout=timeout)
            if line is None:
                raise RuntimeError("chromium exited before it listened:\n" + "".join(self.log[-30:]))
            if "DevTools listening on " in line:
                self.browser_url = line.split("DevTools listening on ", 1)[1].strip()
                break
        self.browser = Session(self.browser_url, timeout)

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            lines.put(line)
        lines.put(None)

    def open(self, path: Path) -> PageResult:
        target = self.browser.call("Target.createTarget", url="about:blank")["targetId"]
        host = self.browser_url.split("/devtools/")[0]
        page = Session(f"{host}/devtools/page/{target}", self.timeout)
        try:
            return page.load(path)
        finally:
            page.close()
            self.browser.call("Target.closeTarget", targetId=target)

    def close(self) -> None:
        self.browser.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class PageResult:
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    facts: dict[str, Any]  # what COUNT_CHARTS returned
    screenshot: bytes = field(repr=False)


# What the report page declares (body data-charts) and what the browser drew:
# a chart counts as rendered when its <svg> has a non-empty box and drawn paths.
COUNT_CHARTS = """(() => {
  const figs = [...document.querySelectorAll('figure.chart')];
  const drawn = figs.filter(f => {
    const svg = f.querySelector('svg');
    if (!svg) return false;
    const box = svg.getBoundingClientRect();
    return box.width > 100 && box.height > 50 && svg.querySelectorAll('path').length > 10;
  });
  return {
    declared: Number(document.body.dataset.charts),
    figures: figs.length,
    rendered: drawn.map(f => f.id),
    height: Math.ceil(document.documentElement.scrollHeight),
    title: document.title,
  };
})()"""


class Session:
    """One DevTools websocket: commands by id, events kept in arrival order."""

    def __init__(self, url: str, timeout: float) -> None:
        # Chromium refuses websocket handshakes that carry an Origin it was not told to allow.
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def wait_for(self, method: str) -> dict[str, Any]:
        for msg in self.events:
            if msg.get("method") == method:
                return msg
        while True:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg

    def errors(self) -> list[str]:
        out = []
        for msg in self.events:
            m, p = msg.get("method"), msg.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(
                    f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}"
                )
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')}")
        return out

    def load(self, path: Path) -> PageResult:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False
        )
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        facts = self.call("Runtime.evaluate", expression=COUNT_CHARTS, returnByValue=True)["result"]["value"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": WIDTH, "height": facts["height"], "scale": 1})  # fmt: skip
        return PageResult(self.errors(), facts, base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.ws.close()
