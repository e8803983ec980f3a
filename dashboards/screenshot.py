"""Open a dashboard in headless Chromium, check that every chart rendered, and save a PNG screenshot.

    .venv/bin/python -m dashboards.screenshot results/dashboard.html docs/dashboard.png

Uses Playwright's Python package with a system Chromium (Debian's /usr/bin/chromium by
default), not a browser that `playwright install` downloads. Every request other than
file: and data: URLs is blocked and counted, so the check also shows that the page needs
no network. Exits with status 1 when the page logged an error, threw, made a network
request or rendered a different number of charts than it declares.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_PATH = "/usr/bin/chromium"
# Flags for a container where Chromium runs as root, without a GPU or network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
VIEWPORT = {"width": 1400, "height": 900}
# A Plotly chart counts as rendered when its .main-svg has child elements.
RENDERED_CHARTS_SCRIPT = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(
  (plot) => Array.from(plot.querySelectorAll('.main-svg')).some((svg) => svg.childElementCount > 0)
).length
"""
LOAD_TIMEOUT_MS = 120_000


@dataclass
class PageCheck:
    """What a headless browser saw on a dashboard page."""

    charts_declared: int
    charts_rendered: int
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked_requests: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Return one line per problem found, [] for a clean page."""
        problems = [f"console error: {message}" for message in self.console_errors]
        problems += [f"page error: {message}" for message in self.page_errors]
        problems += [f"network request blocked: {url}" for url in self.blocked_requests]
        if self.charts_rendered != self.charts_declared:
            problems.append(f"{self.charts_rendered} charts rendered; the page declares {self.charts_declared}")
        return problems


@contextlib.contextmanager
def browser_page(chromium: str = CHROMIUM_PATH) -> Iterator[tuple[Page, PageCheck]]:
    """Yield a page of a fresh headless Chromium profile and the PageCheck that collects its errors.

    Console errors, uncaught page errors and blocked network requests are recorded from
    the start. The chart counts stay 0 until the caller fills them.
    """
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="capkv-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS), viewport=VIEWPORT
        )
        try:
            check = PageCheck(charts_declared=0, charts_rendered=0)
            context.route("**/*", lambda route: _allow_local(check, route))
            page = context.new_page()
            page.on("console", lambda message: _record_console(check, message))
            page.on("pageerror", lambda error: check.page_errors.append(str(error)))
            yield page, check
        finally:
            context.close()


def open_dashboard(page: Page, check: PageCheck, html_path: str | Path) -> None:
    """Load `html_path` via file://, wait until its declared charts have drawn, and fill the chart counts."""
    page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=LOAD_TIMEOUT_MS)
    check.charts_declared = int(page.locator("body").get_attribute("data-chart-count") or 0)
    _wait_for_charts(page, check.charts_declared)
    check.charts_rendered = page.evaluate(RENDERED_CHARTS_SCRIPT)


def check_page(html_path: str | Path, png_path: str | Path | None = None, chromium: str = CHROMIUM_PATH) -> PageCheck:
    """Open `html_path` in headless Chromium and return what the browser saw.

    With `png_path`, a full-page screenshot is saved there, its folder created.
    """
    with browser_page(chromium) as (page, check):
        open_dashboard(page, check, html_path)
        if png_path is not None:
            Path(png_path).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png_path), full_page=True)
    return check


def _record_console(check: PageCheck, message) -> None:
    if message.type == "error":
        check.console_errors.append(message.text)


def _allow_local(check: PageCheck, route) -> None:
    url = route.request.url
    if url.startswith(("file:", "data:")):
        route.continue_()
    else:
        check.blocked_requests.append(url)
        route.abort()


def _wait_for_charts(page: Page, declared: int) -> None:
    """Wait until `declared` charts have drawn, or the timeout passes; the caller compares the counts."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if declared == 0:
        return
    try:
        page.wait_for_function(f"({RENDERED_CHARTS_SCRIPT})() >= {declared}", timeout=LOAD_TIMEOUT_MS)
    except PlaywrightTimeout:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a dashboard in headless Chromium and save a screenshot.")
    parser.add_argument("html", help="dashboard HTML file")
    parser.add_argument("png", help="PNG file to write (full page)")
    parser.add_argument("--chromium", default=CHROMIUM_PATH, help=f"Chromium executable (default: {CHROMIUM_PATH})")
    args = parser.parse_args(argv)
    check = check_page(args.html, args.png, args.chromium)
    print(f"{args.png}: {check.charts_rendered} of {check.charts_declared} charts rendered")
    for problem in check.problems:
        print(problem, file=sys.stderr)
    return 1 if check.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
