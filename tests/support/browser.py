"""The real Admin UI in headless Chromium: the built UI of ``@socket.io/admin-ui`` (installed by
``tests/js``' lockfile, never committed) served from a thread, and a Selenium session on
Debian's ``chromium`` + ``chromedriver`` (``make install-chromium``).

Selenium's calls block: tests run them with ``asyncio.to_thread`` so that their own clients keep
being served meanwhile; the UI's files are served from a thread for the same reason. Waits poll
the page until what they expect is shown, with a timeout reached only when something is broken.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from support.cluster_harness import TIMEOUT

UI_DIST = Path(__file__).resolve().parent.parent / "js/node_modules/@socket.io/admin-ui/ui/dist"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
#: A run where a missing browser or UI is a failure, not a skip: CI, and ``make test``.
BROWSER_REQUIRED = bool(os.environ.get("CI") or os.environ.get("ROOMCAST_TEST_REQUIRE_BROWSER"))
MISSING = [
    what
    for what, present in (
        ("chromium", CHROMIUM),
        ("chromedriver", CHROMEDRIVER),
        (str(UI_DIST), (UI_DIST / "index.html").is_file()),
    )
    if not present
]

needs_browser = pytest.mark.skipif(
    bool(MISSING) and not BROWSER_REQUIRED, reason=f"missing: {', '.join(MISSING)}"
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_ui() -> Iterator[str]:
    """Serve the built UI on 127.0.0.1 (port 0) from a thread; yields its origin."""
    handler = functools.partial(_Quiet, directory=str(UI_DIST))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="admin-ui-files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium session, always quit."""
    assert not MISSING, f"missing: {', '.join(MISSING)}"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class UI:
    """The Admin UI open in a browser: what a person would do and see."""

    def __init__(self, driver: webdriver.Chrome, origin: str, shots: Path) -> None:
        self.driver = driver
        self.origin = origin
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def text(self) -> str:
        """The page's visible text."""
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_text(self, *parts: str, timeout: float = TIMEOUT) -> None:
        """Wait until the page shows every one of ``parts`` (in any case: labels are styled
        in capitals)."""
        wanted = [p.lower() for p in parts]
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                lambda _: all(p in self.text().lower() for p in wanted)
            )
        except Exception:
            raise AssertionError(
                f"the UI never showed {parts!r}; it shows:\n{self.text()}"
            ) from None

    def wait_gone(self, part: str, timeout: float = TIMEOUT) -> None:
        """Wait until the page no longer shows ``part``."""
        WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda _: part not in self.text()
        )

    def shot(self, name: str) -> Path:
        """Save a screenshot of the page as it is."""
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def open(self) -> None:
        """Load the UI (it opens its connection form: nothing is stored yet)."""
        self.driver.get(self.origin + "/")
        self.wait_text("Connect")

    def login(self, server_url: str, username: str, password: str) -> None:
        """Fill the connection form and submit it, as a person would."""
        inputs = self._dialog_inputs()
        for field, value in zip(inputs[:3], (server_url, username, password), strict=True):
            # Select and type over: clear() leaves Vue's model of the field as it was.
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(Keys.DELETE)
            field.send_keys(value)
        self.driver.find_element(By.CSS_SELECTOR, ".v-dialog button[type=submit]").click()

    def _dialog_inputs(self) -> list[WebElement]:
        WebDriverWait(self.driver, TIMEOUT).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".v-dialog input")) >= 3
        )
        return list(self.driver.find_elements(By.CSS_SELECTOR, ".v-dialog input"))

    def wait_logged_in(self) -> None:
        """Wait until the UI's status says it is connected (the form then closes)."""
        try:
            WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.1).until(
                lambda _: (
                    "status: connected" in self.text().replace("\n", " ").lower()
                    and "status: disconnected" not in self.text().replace("\n", " ").lower()
                )
            )
        except Exception:
            self.shot("failed-login")
            logs = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
            raise AssertionError(
                f"the UI did not connect: {logs}; it shows:\n{self.text()}"
            ) from None

    def go(self, route: str) -> None:
        """Show a view of the UI (its router's hash), without reloading it."""
        self.driver.execute_script("window.location.hash = arguments[0]", route)

    def click_icon(self, icon: str) -> None:
        """Click the (first displayed) button showing the Material icon ``icon``."""
        xpath = f"//button[.//i[contains(@class, '{icon}')]]"
        WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.1).until(
            lambda d: any(
                b.is_displayed() and b.is_enabled() for b in d.find_elements(By.XPATH, xpath)
            )
        )
        button = next(b for b in self.driver.find_elements(By.XPATH, xpath) if b.is_displayed())
        button.click()

    def join_room(self, room: str) -> None:
        """On a socket's view: type a room in "Join a room" and press its join button."""
        field = self.driver.find_element(
            By.XPATH, "//label[contains(., 'Join a room')]/following-sibling::input"
        )
        field.send_keys(room)
        self.click_icon("mdi-tag-plus-outline")
