"""A small W3C WebDriver client for Debian's headless Chromium (no Selenium needed).

Starts ``chromedriver`` on a free loopback port and one Chromium session with
the flags this machine needs (no sandbox as root, no GPU, no background
network traffic, a fresh profile); speaks the WebDriver protocol (JSON over
HTTP, https://www.w3.org/TR/webdriver2/) with urllib::

    with Browser(tmp_path / "profile") as browser:
        browser.get("http://127.0.0.1:8080/admin")
        browser.find("#token").send_keys("secret")
        browser.screenshot(path)

Waits poll the page with a deadline (:meth:`Browser.wait_for`), never sleep blind.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open

#: The element reference key of the W3C protocol.
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
)


class WebDriverError(RuntimeError):
    """The driver answered an error (its ``error`` and ``message``)."""


def chromium_binary() -> str:
    """Debian's Chromium (fails the test when it is missing: scripts/install-peers.sh)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return require_tool("chromium")


class Element:
    """One element of the page, by its WebDriver reference."""

    def __init__(self, browser: Browser, ref: str) -> None:
        self.browser = browser
        self.ref = ref

    def click(self) -> None:
        self.browser.command("POST", f"/element/{self.ref}/click", {})

    def send_keys(self, text: str) -> None:
        self.browser.command("POST", f"/element/{self.ref}/value", {"text": text})

    @property
    def text(self) -> str:
        return str(self.browser.command("GET", f"/element/{self.ref}/text"))


class Browser:
    """chromedriver + one headless Chromium session (see the module docstring).

    Parameters
    ----------
    profile_dir : Path
        A fresh, empty folder for ``--user-data-dir``.
    width, height : int
        Window size in CSS pixels (screenshots have this size).
    extra_flags : tuple of str
        More Chromium flags (e.g. ``--enable-unsafe-swiftshader`` for WebGL
        without a GPU, which the OHIF viewer needs).
    """

    def __init__(self, profile_dir: Path, width: int = 1360, height: int = 1000,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.profile_dir = Path(profile_dir)
        self.profile_dir.mkdir(parents=True, exist_ok=False)
        self.driver = subprocess.Popen(
            [require_tool("chromedriver"), f"--port={self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.session: str | None = None
        try:
            wait_until(lambda: tcp_open(self.port), 30, "chromedriver's port")
            options = {"binary": chromium_binary(),
                       "args": [*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={self.profile_dir}",
                                f"--window-size={width},{height}"]}
            answer = self._http("POST", "/session", {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}})
            self.session = str(answer["sessionId"])
        except BaseException:
            self.close()
            raise

    # --- protocol ---------------------------------------------------------------
    def _http(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            value = json.loads(err.read() or b"{}").get("value", {})
            raise WebDriverError(f"{value.get('error')}: {value.get('message')}") from None

    def command(self, method: str, path: str, body: Any = None) -> Any:
        """One command of this session (``path`` below ``/session/{id}``)."""
        return self._http(method, f"/session/{self.session}{path}", body)

    # --- page -------------------------------------------------------------------
    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the page."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> Element:
        answer = self.command("POST", "/element", {"using": "css selector", "value": css})
        return Element(self, str(answer[ELEMENT_KEY]))

    def text(self, css: str = "body") -> str:
        """The visible text of the first element matching ``css`` ('' when none does)."""
        return str(self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))

    def wait_for(self, script: str, timeout_s: float, what: str, *args: Any) -> Any:
        """Poll ``script`` in the page until it returns something truthy."""
        return wait_until(lambda: self.execute(script, *args), timeout_s, what)

    def wait_for_text(self, css: str, needle: str, timeout_s: float = 30.0) -> str:
        """Wait until ``needle`` is in the visible text of ``css``; returns that text."""
        self.wait_for("const e = document.querySelector(arguments[0]);"
                      " return !!e && e.innerText.includes(arguments[1]);",
                      timeout_s, f"{needle!r} in {css}", css, needle)
        return self.text(css)

    def cdp(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One DevTools protocol command through chromedriver's ``goog/cdp/execute``."""
        return self.command("POST", "/goog/cdp/execute", {"cmd": method, "params": params or {}})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """Save a PNG of the viewport, or with ``full_page`` of the whole page (DevTools)."""
        if full_page:
            size = self.cdp("Page.getLayoutMetrics")["cssContentSize"]
            shot = self.cdp("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1}})
            png = base64.b64decode(shot["data"])
        else:
            png = base64.b64decode(self.command("GET", "/screenshot"))
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise WebDriverError("the screenshot is not a PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    # --- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        if self.session is not None:
            try:
                self._http("DELETE", f"/session/{self.session}")
            except (WebDriverError, OSError):
                pass  # the driver is stopped below either way
            self.session = None
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
