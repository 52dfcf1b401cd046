"""Headless Chromium through Selenium, for tests that look at the UIs the way a user does.

Chromium and its driver come from the system (`make test` installs the Debian packages `chromium` and
`chromium-driver` when they are missing); nothing is downloaded at run time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"none of {names} is installed; run `make test` (it installs chromium and chromium-driver)")


@contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: webdriver.Chrome, attempts: int = 5) -> str:
    """The page's visible text; re-read when a re-render replaces the body while it is being read."""
    for _ in range(attempts - 1):
        try:
            return driver.find_element("tag name", "body").text
        except StaleElementReferenceException:
            time.sleep(0.2)
    return driver.find_element("tag name", "body").text


def wait_for_text(driver: webdriver.Chrome, check: Callable[[str], bool], timeout_s: float = 30.0) -> str:
    """The page's text once ``check(text)`` holds (the last text seen otherwise)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = page_text(driver)
        if check(text):
            return text
        time.sleep(0.5)
    return text


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def click_button(driver: webdriver.Chrome, label: str, timeout_s: float = 30.0) -> None:
    """Click the visible button whose text is ``label`` (once it is there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        buttons = [
            b for b in driver.find_elements("xpath", f"//button[normalize-space()='{label}']") if b.is_displayed()
        ]
        if buttons:
            driver.execute_script("arguments[0].click()", buttons[0])  # a click, even under a tooltip or toast
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no visible {label!r} button within {timeout_s:.0f} s")
        time.sleep(0.2)
