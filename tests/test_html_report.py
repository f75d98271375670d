"""report.html of run, sweep and plan, rendered by headless Chromium from disk (no server): the
page must show the numbers of the JSON, embed its plots and fetch nothing.

Chromium is installed by .ci/run (Debian's `chromium` package), which sets CI=1: there a missing
browser fails the test. Elsewhere it is skipped with a line saying how to install it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.cli import main
from simulator.serving.scenario import Scenario

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
    pytest.skip("chromium is not installed here (apt-get install -y chromium); CI installs it and fails without it")


class Page(HTMLParser):
    """What the rendered DOM shows: the text of every cell tagged with a JSON key, the images'
    sources, every URL the page would fetch, and all of its text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.images: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and a.get("data-key"):
            self._key = a["data-key"]
            self.cells[self._key] = ""
        if tag == "img":
            self.images.append(a.get("src") or "")
        for name in ("src", "href"):
            if a.get(name) and not (a[name] or "").startswith("data:"):
                self.urls.append(a[name] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._key is not None:
            self.cells[self._key] += data


class Browser:
    """One headless Chromium for this module's pages, driven over its DevTools pipe (the Chrome
    DevTools Protocol on fds 3 and 4: no port, no server). Starting Chromium costs about 1.3 s of
    CPU, a page about 0.15 s: one browser for the pages instead of one per page (--dump-dom)."""

    def __init__(self, exe: str, profile: Path) -> None:
        self.log = open(profile.parent / "chromium.log", "w+b")
        # the shell puts our pipe to it on fd 3 and its pipe to us on fd 4, where Chromium wants them
        self.proc = subprocess.Popen(
            ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null', exe, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.buf = b""
        self.last = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        """The next message from Chromium (each ends with a NUL byte)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], "Chromium did not answer in 180 s"
            chunk = os.read(fd, 1 << 20)
            assert chunk, f"Chromium exited: {self.stderr()}"
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and return its result; the events that come meanwhile are kept."""
        assert self.proc.stdin is not None
        self.last += 1
        msg: dict[str, Any] = {"id": self.last, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 180
        while True:
            m = self._message(deadline)
            if m.get("id") == self.last:
                assert "error" not in m, (method, m["error"], self.stderr())
                return m["result"]
            self.events.append(m)

    def wait(self, method: str, **want: Any) -> None:
        """Until the event `method` whose params hold `want` came (kept or new)."""
        deadline = time.monotonic() + 180
        while not any(e.get("method") == method and want.items() <= e.get("params", {}).items() for e in self.events):
            self.events.append(self._message(deadline))
        self.events.clear()

    def dom(self, url: str) -> str:
        """The DOM Chromium built for the page at `url` once it loaded, as --dump-dom prints it,
        from a new tab that is closed after."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Page.setLifecycleEventsEnabled", {"enabled": True}, session)
        nav = self.call("Page.navigate", {"url": url}, session)
        assert "errorText" not in nav, nav
        self.wait("Page.lifecycleEvent", name="load", loaderId=nav["loaderId"])  # this page's load, not about:blank's
        html = self.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                              "returnByValue": True}, session)["result"]["value"]
        self.call("Target.closeTarget", {"targetId": target})
        return html

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close")
                self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    b = Browser(chromium(), tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def render(browser: Browser, path: Path) -> Page:
    """Open the file in headless Chromium and parse the DOM it built."""
    html = browser.dom(path.as_uri())
    assert "</html>" in html, browser.stderr()
    page = Page()
    page.feed(html)
    assert not page.urls, page.urls  # self-contained: nothing to fetch
    for src in page.images:  # every plot is an embedded PNG
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return page


def shown(text: str) -> tuple[float, float]:
    """The number a cell shows and half a unit of its last digit (what rounding may hide)."""
    t = text.strip().replace(",", "")
    scale = 0.01 if t.endswith("%") else 1.0
    t = t.rstrip("%")
    assert re.fullmatch(r"-?\d+(\.\d+)?", t), text
    decimals = len(t.split(".")[1]) if "." in t else 0
    return float(t) * scale, 0.5 * 10 ** -decimals * scale * (1 + 1e-9)


def assert_shows(page: Page, expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        assert key in page.cells, f"{key} not on the page"
        if value is None:
            assert page.cells[key].strip() == "n/a", (key, page.cells[key])
            continue
        number, tol = shown(page.cells[key])
        assert abs(number - value) <= tol, (key, page.cells[key], value)


def dig(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


# -- run -------------------------------------------------------------------------------------------
RUN = {
    "name": "html-run", "model": "llama-3.2-1b", "hardware": "l4",
    "serving": {"scheduler": "continuous", "max_batch_size": 8, "max_batched_tokens": 400},
    "workload": {"num_requests": 300, "arrival": {"process": "poisson", "rate": 8.0},
                 "prompt_len": {"dist": "uniform", "low": 32, "high": 512},
                 "output_len": {"dist": "uniform", "low": 2, "high": 64}},
    "slo": {"ttft_ms": 100, "tpot_ms": 20}, "seed": 5,
}
RUN_KEYS = ["requests.arrived", "requests.completed", "requests.rejected", "makespan_s", "output_tokens_per_s",
            "requests_per_s", "mfu", "mbu", "kv.peak_frac", "preemptions.total", "goodput.requests_per_s",
            *(f"{m}.{s}" for m in ("ttft_ms", "tpot_ms", "e2e_ms") for s in ("mean", "p50", "p90", "p99")),
            *(f"moments_by_kind.{k}.{s}" for k in ("prefill", "decode") for s in ("count", "mean", "p50", "p99"))]


@pytest.mark.parametrize("rate", [8.0, 400.0])
def test_run_report_shows_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], browser: Browser,
                                   rate: float) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**RUN, "workload": {**RUN["workload"], "arrival": {"process": "poisson", "rate": rate}}}))
    out = tmp_path / "out"
    assert main(["run", str(p), "--json", "--out", str(out)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"]["rejected"] > 0  # prompts above max_batched_tokens: the page must say so
    page = render(browser, out / "report.html")
    assert_shows(page, {k: dig(s, k) for k in RUN_KEYS})
    assert_shows(page, {f"breakdown_share.{k}": v for k, v in s["breakdown_share"].items()})
    text = " ".join(page.text)
    assert f"completed requests only: {s['requests']['completed']:,} of {s['requests']['arrived']:,}" in text
    assert "prompt > max_batched_tokens" in text
    assert ("OVERLOADED" in text) is s["overloaded"] is (rate > 100)
    assert len(page.images) == 4


# -- sweep -----------------------------------------------------------------------------------------
def test_sweep_report_shows_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], browser: Browser) -> None:
    base = {**RUN, "hardware": "h100-sxm", "serving": {"scheduler": "continuous", "max_batch_size": 8},
            "workload": {**RUN["workload"], "num_requests": 60}}
    sw = tmp_path / "sw.yaml"
    sw.write_text(yaml.safe_dump({"name": "html-sweep", "base": base,
                                  "grid": {"workload.arrival.rate": [2.0, 8.0], "serving.max_batch_size": [4, 16]}}))
    out = tmp_path / "out"
    assert main(["sweep", str(sw), "--out", str(out), "--workers", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["files"]["report"] == str(out / "report.html")
    page = render(browser, out / "report.html")
    expected = {}
    for i, r in enumerate(res["results"]):
        for k in ("output_tokens_per_s", "ttft_ms.p99", "tpot_ms.p99", "cost_per_m_output_tokens"):
            expected[f"{i}:{k}"] = r[k]
        assert page.cells[f"{i}:status"] == r["status"]
    assert_shows(page, expected)
    assert len(page.images) == 2


# -- plan --------------------------------------------------------------------------------------------
def test_plan_report_shows_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, browser: Browser) -> None:
    def runner(sc: Scenario) -> dict[str, Any]:  # a stand-in: the SLO holds from 2 replicas of an H100
        ok = sc.serving.replicas >= (2 if sc.hardware == "h100-sxm" else 1)
        return {"output_tokens_per_s": 600.0 + sc.seed, "ttft_ms": {"p99": 100.0 + 10 * sc.seed if ok else 900.0},
                "tpot_ms": {"p99": 8.0 + sc.seed}, "goodput": {"fraction": 1.0}, "requests": {"rejected": 0}}

    monkeypatch.setattr("simulator.studies.plan.default_runner", runner)
    plan = {"name": "html-plan", "model": "llama-3.2-1b",
            "workload": {"num_requests": 100, "arrival": {"process": "poisson", "rate": 10.0},
                         "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 64}},
            "slo": {"p99_ttft_ms": 200, "p99_tpot_ms": 20},
            "candidates": [{"hardware": "h100-sxm"}, {"hardware": "l4", "price_per_hour": 0.9}],
            "search": {"tp": [1], "max_replicas": 4, "max_batch_size": [16]}, "rate_steps": 2}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert main(["plan", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    page = render(browser, tmp_path / "out" / "report.html")
    expected = {}
    for c in res["candidates"]:
        for k in ("devices", "cost_per_hour", "cost_per_m_output_tokens", "p99_ttft_ms", "p99_tpot_ms", "max_rate"):
            expected[f"{c['hardware']}.{k}"] = c[k]
    assert_shows(page, expected)
    text = " ".join(page.text)
    assert "the answer" in text and "binding: TTFT" in text and len(page.images) == 1
