"""A real headless Chromium for the dashboard's tests: Debian's `chromium` driven by Selenium
through Debian's `chromedriver` (both given by path, so Selenium Manager looks for and
downloads nothing). Tests wait on what the page shows, never for a fixed time."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.integration.conftest import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1280, 800


def have_chromium() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


class Browser:
    """One browser window on the dashboard at `base_url`, at WIDTH x HEIGHT."""

    def __init__(self, base_url: str, shots: Path):
        self.base_url = base_url
        self.shots = shots
        self.profile = Path(tempfile.mkdtemp(prefix="vmorch-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--lang=en-US",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
        self.driver = webdriver.Chrome(options=options, service=service)
        # --window-size is the window's outer size: make the page's own WIDTH x HEIGHT
        inner_w, inner_h = self.script("return [innerWidth, innerHeight]")
        self.driver.set_window_size(2 * WIDTH - inner_w, 2 * HEIGHT - inner_h)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- moving around -------------------------------------------------------------------
    def sign_in(self, token: str) -> None:
        """Load the dashboard afresh (a tab of its own: no session left from before) and
        sign in with `token`."""
        # forget the last session first, on a page of the origin that runs no script
        self.driver.get(self.base_url + "/ui/favicon.svg")
        self.script("sessionStorage.clear()")
        self.errors()  # and what was logged before
        self.driver.get(self.base_url + "/#/queue")
        field = self.wait_for("#token")
        field.send_keys(token)
        self.find("form.login button[type=submit]").click()
        self.wait_for("#nav a[data-page=queue]")

    def go(self, route: str) -> None:
        """Show a page of the signed-in dashboard (`#/jobs/<id>`) without loading it anew."""
        self.script("location.hash = arguments[0]", route)
        page = route.removeprefix("#/").split("/")[0].split("?")[0]
        self.wait_for(f"div.page[data-page={page}]")

    def answer(self, values: dict[str, str]) -> None:
        """Fill in the open dialog's fields by name (inputs, text areas, selects) and
        confirm it."""
        self.wait_for("dialog[open]")
        for name, value in values.items():
            self.script(
                "document.querySelector(`dialog[open] [name='${arguments[0]}']`).value ="
                " arguments[1]",
                name,
                value,
            )
        self.click("dialog[open] [data-action=confirm]")
        self.wait_gone("dialog[open]")

    def route(self) -> str:
        return str(self.script("return location.hash"))

    def mark(self) -> None:
        """Mark the document: `still_marked` is False once the page has been reloaded."""
        self.script("window.__notReloaded = true")

    def still_marked(self) -> bool:
        return bool(self.script("return window.__notReloaded === true"))

    # --- looking -------------------------------------------------------------------------
    def script(self, js: str, *args: Any) -> Any:
        return self.driver.execute_script(js, *args)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, css: str, timeout_s: float = 20, text: str | None = None) -> WebElement:
        """The first element matching `css` (and holding `text`), once there is one."""

        def found() -> WebElement | None:
            try:
                for el in self.all(css):
                    if text is None or text in el.text:
                        return el
            except StaleElementReferenceException:
                pass  # re-rendered meanwhile: look again
            return None

        what = f"{css}" + (f" holding {text!r}" if text else "")
        found_el: WebElement = wait_until(found, timeout_s, what)
        return found_el

    def click(self, css: str, timeout_s: float = 20, text: str | None = None) -> None:
        """Click the first element matching `css` (and holding `text`) once there is one;
        again if the page replaced it between finding and clicking."""

        def clicked() -> bool:
            try:
                self.wait_for(css, timeout_s, text).click()
                return True
            except StaleElementReferenceException:
                return False

        wait_until(clicked, timeout_s, f"a click on {css}")

    def text(self, css: str, timeout_s: float = 20, text: str | None = None) -> str:
        """The text of the first element matching `css` (and holding `text`)."""

        def read() -> str | None:
            try:
                return self.wait_for(css, timeout_s, text).text
            except StaleElementReferenceException:
                return None

        found: str = wait_until(read, timeout_s, f"the text of {css}")
        return found

    def wait_gone(self, css: str, timeout_s: float = 20) -> None:
        wait_until(lambda: not self.all(css), timeout_s, f"{css} to go")

    def attribute(self, css: str, name: str) -> str | None:
        """An attribute of the first element matching `css` (None when there is none),
        read in the page: no stale element between finding and reading."""
        value = self.script(
            "const el = document.querySelector(arguments[0]);"
            "return el === null ? null : el.getAttribute(arguments[1]);",
            css,
            name,
        )
        return None if value is None else str(value)

    def attributes(self, css: str, name: str) -> list[str | None]:
        """An attribute of every element matching `css`, in document order."""
        values: list[str | None] = self.script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((el) => el.getAttribute(arguments[1]));",
            css,
            name,
        )
        return values

    def errors(self) -> list[str]:
        """What the page logged as errors (uncaught exceptions, refused loads)."""
        log: list[dict[str, str]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [e["message"] for e in log if e["level"] == "SEVERE"]

    def shot(self, name: str) -> Path:
        """Save a PNG of the window as `<name>.png` in the screenshots directory."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
