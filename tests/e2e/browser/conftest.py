"""Browser fixtures: headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) on pages
of a REAL server on 127.0.0.1, with every request the page makes recorded.

- `site`: one server per session over a registry holding the demo story, its latest checkpoint
  signed by the operator and cosigned by the regulator fujian-eco (read-only: tests that write
  start their own server with the e2e `serve` fixture).
- `browser`: Chromium launched with the flags that keep it off the network (no background
  networking, component updates, sync, first-run or default-browser checks, translation, safe
  browsing or metrics), in a fresh profile Playwright makes for each launch.
- `tab`: a page in a new context (1280×800, Chinese first), as a `Tab`. Every request goes
  through a route that lets loopback through and aborts anything else, so a page cannot reach
  the network even by mistake; `tab.assert_offline()` fails if it tried. `tab.shoot(name)`
  saves screenshots at 1280×800 and 390×844 under var/test-artifacts/screenshots/ (gitignored),
  and `tab.assert_accessible()` runs axe-core in the page and fails on serious or critical
  violations.

ops/test installs Chromium and a CJK font when they are missing; without Chromium the browser
tests are skipped, and under CI=true they fail.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "var" / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("CARBON_LEDGER_CHROMIUM", "/usr/bin/chromium")
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
CHROMIUM_FLAGS = [
    "--no-sandbox",  # root in CI: Chromium's sandbox needs a user namespace it may not get
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    "--password-store=basic",
    "--use-mock-keychain",
]
BLOCKING_IMPACTS = ("serious", "critical")


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True  # never leaves the page
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one test module. Not for the session: while Playwright's sync API
    is open, the main thread counts as running an asyncio loop, and every later test that runs
    a loop of its own (run_until_complete, asyncio.run) would fail with "another loop is
    running"."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        reason = f"no Chromium at {CHROMIUM} (ops/test installs Debian's chromium as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser tests need Chromium under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def site(serve: Any, demo_registry_files: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A LiveServer over the demo registry, with a checkpoint cosigned by fujian-eco."""
    root = tmp_path_factory.mktemp("site") / "server"
    demo_registry_files(root)
    return serve(root)


@dataclass
class Tab:
    """A browser page and what it asked the network for."""

    page: Any
    name: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # what the page's CSP kept it from fetching

    def goto(self, url: str, **kwargs: Any) -> Any:
        return self.page.goto(url, wait_until="networkidle", **kwargs)

    def assert_offline(self) -> None:
        """Every request went to loopback (the others were aborted, and fail the test)."""
        assert self.requests, "the page made no request at all"
        assert not self.blocked, f"the page asked for resources off loopback: {self.blocked}"
        assert all(_is_loopback(u) for u in self.requests), self.requests

    def shoot(self, label: str = "", *, full_page: bool = True) -> list[Path]:
        """Screenshots (of the whole page, or of the viewport) at 1280×800 and 390×844; the
        viewport is restored after."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name + (f"-{label}" if label else "")).strip("-")
        saved = []
        for size in (WIDE, NARROW):
            self.page.set_viewport_size(size)
            path = SCREENSHOTS / f"{stem}-{size['width']}x{size['height']}.png"
            self.page.screenshot(path=str(path), full_page=full_page)
            saved.append(path)
        self.page.set_viewport_size(WIDE)
        return saved

    def assert_accessible(self, context: str | None = None, *, waived: dict[str, str] | None = None
                          ) -> None:
        """axe-core's checks in the page (or in `context`, a CSS selector): none serious or
        critical may remain. `waived`: rule id -> why it is not checked (a third party's markup
        this project cannot change)."""
        from axe_playwright_python.sync_playwright import Axe

        options: dict[str, Any] = {"resultTypes": ["violations"]}
        if waived:
            assert all(why.strip() for why in waived.values()), "say why each rule is waived"
            options["rules"] = {rule: {"enabled": False} for rule in waived}
        response = Axe().run(self.page, context=context, options=options).response
        blocking = [v for v in response["violations"] if v.get("impact") in BLOCKING_IMPACTS]
        report = "\n".join(
            f"{v['impact']}: {v['id']} ({v['help']}): "
            + "; ".join(" ".join(n["target"]) for n in v["nodes"][:5]) for v in blocking)
        assert response["testEngine"]["name"] == "axe-core"  # it ran, in this page
        assert not blocking, f"accessibility violations on {self.page.url}:\n{report}"


@pytest.fixture
def tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context(viewport=WIDE, locale="zh-CN", service_workers="block")
    page = context.new_page()
    recorded = Tab(page, request.node.name)

    def route(r: Any) -> None:
        url = r.request.url
        recorded.requests.append(url)
        if _is_loopback(url):
            r.continue_()
        else:
            recorded.blocked.append(url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    page.on("pageerror", lambda e: recorded.errors.append(str(e)))
    page.on("console", lambda m: recorded.refused.append(m.text)
            if "Content Security Policy" in m.text else None)
    try:
        yield recorded
    finally:
        context.close()
