"""A real headless Chromium for the HTML report's tests, driven by Selenium through chromedriver.

Debian's `chromium` and `chromium-driver` packages (installed by .ci/run); Selenium from the `test` extra.
The page is opened from file:// with the network switched off (DevTools offline emulation, and every host
name resolving nowhere), so a page that needed the network would show it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# What the page holds once rendered: each chart with its number of marks (boxes, bars) and drawn width,
# the elements that would fetch or run something, and the visible text.
_PROBE = """
return {
  charts: Array.from(document.querySelectorAll('svg.chart')).map(s => ({
    name: s.dataset.chart,
    marks: s.querySelectorAll('g.box, rect.bar').length,
    width: s.getBoundingClientRect().width,
    labels: Array.from(s.querySelectorAll('[data-label]')).map(m => m.dataset.label),
  })),
  active: document.querySelectorAll('script, img, iframe, object, embed, link, audio, video').length,
  handlers: Array.from(document.querySelectorAll('*')).filter(
    e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length,
  text: document.body.innerText,
  height: document.documentElement.scrollHeight,
};
"""


@dataclass
class PageLoad:
    charts: list[dict[str, Any]]
    active_elements: int  # script, img, iframe... (none expected: the report draws inline SVG only)
    handler_attributes: int  # elements with an on* attribute
    text: str
    console: list[dict[str, Any]]  # every browser console entry (CSP violations and failed loads land here)
    screenshot: Path

    @property
    def console_errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.console if entry.get("level") in ("SEVERE", "ERROR")]


def require_chromium() -> tuple[str, str]:
    """Chromium and chromedriver, or skip saying how to get them."""
    pytest.importorskip("selenium", reason='Selenium is not installed: pip install ".[test]"')
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "No Chromium with chromedriver on PATH: apt-get install chromium chromium-driver "
            "(.ci/run installs them) to run the browser test"
        )
    return browser, driver


def load_offline(page: Path, screenshot: Path, profile: Path) -> PageLoad:
    """Open `page` in headless Chromium with no network; read its charts and console; save a full-page
    screenshot to `screenshot`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1000,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        driver.get(page.resolve().as_uri())
        found = driver.execute_script(_PROBE)
        driver.set_window_size(1000, min(int(found["height"]) + 40, 16000))
        driver.save_screenshot(str(screenshot))
        console = driver.get_log("browser")
    finally:
        driver.quit()
    return PageLoad(found["charts"], found["active"], found["handlers"], found["text"], console, screenshot)
