"""Headless Chromium and loopback servers for the browser-level UI tests.

A real browser (Debian's ``chromium``) loads the page and runs its scripts; the test polls, in real time
and with a bound, the links the browser rendered (their text as ``innerText``, i.e. as displayed) until
the one it looks for is there, then takes a PNG screenshot. Chromium is driven over its DevTools protocol
with the ``websockets`` client that Prefect already depends on: no browser-automation package, and no
browser download (Playwright's own browsers cannot be fetched here).

Every process started here runs in its own session and is ended, with all its children, on exit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Executable names tried in this order; ``HMRMAMBA_BROWSER`` (a path) takes precedence.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or None."""
    chosen = os.environ.get("HMRMAMBA_BROWSER")
    if chosen:
        return shutil.which(chosen)
    return next((path for path in map(shutil.which, BROWSER_NAMES) if path), None)


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def group_alive(pid: int) -> bool:
    """Whether any process of the group led by ``pid`` is still running."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def serving(cmd: list[str], health_url: str, env: dict[str, str], log: Path,
            timeout: float = 180.0) -> Iterator[subprocess.Popen]:
    """Run a server until the block ends; wait (at most ``timeout`` s) until ``health_url`` answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[0]} exited with {proc.returncode} before serving; log: {log}\n"
                                     + log.read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(health_url, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{health_url} did not answer within {timeout:.0f} s; log: {log}")
            time.sleep(0.3)
        yield proc
    finally:
        _end_group(proc)


#: Every link of the page as [href attribute, text as rendered].
_LINKS_JS = "Array.from(document.querySelectorAll('a[href]'), a => [a.getAttribute('href'), a.innerText])"

#: Click every element matching a selector (``%s``, a JSON string) that was not clicked before.
_CLICK_ONCE_JS = ("document.querySelectorAll(%s).forEach(b => { if (!b.dataset.uiTestClicked) "
                  "{ b.dataset.uiTestClicked = '1'; b.click(); } })")


@dataclass
class Page:
    url: str
    links: list[tuple[str, str]]
    screenshot: Path
    seconds: float


class Browser:
    """A headless Chromium driven over the DevTools protocol (one websocket, one request at a time)."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        """Send one command, return its result; events arriving meanwhile are dropped."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str, screenshot: Path, shows: Callable[[list[tuple[str, str]]], bool],
             expand: str | None = None, timeout: float = 60.0,
             size: tuple[int, int] = (1400, 900)) -> tuple[Page, bool]:
        """Load ``url`` in a new tab and poll its links until ``shows(links)`` (at most ``timeout`` s).

        ``expand``: a CSS selector of buttons that a user would click to reveal what is looked for (say the
        [+] of a collapsed parent row); while it is not shown, each such button is clicked once.
        -> (the page as last seen, with a screenshot taken then; whether it showed).
        """
        start = time.monotonic()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session, url=url)
        while True:
            found = self.call("Runtime.evaluate", session, expression=_LINKS_JS, returnByValue=True)
            seen = [(h, " ".join(t.split())) for h, t in found["result"].get("value") or []]
            shown = shows(seen)
            if shown or time.monotonic() - start > timeout:
                break
            if expand:
                self.call("Runtime.evaluate", session, expression=_CLICK_ONCE_JS % json.dumps(expand))
            time.sleep(0.5)
        time.sleep(0.5 if shown else 0)  # let the row finish painting before the screenshot
        png = self.call("Page.captureScreenshot", session, format="png")["data"]
        screenshot.write_bytes(base64.b64decode(png))
        self.call("Target.closeTarget", targetId=target)
        return Page(url, seen, screenshot, time.monotonic() - start), shown


@contextlib.contextmanager
def headless(executable: str, workdir: Path, timeout: float = 60.0) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile under ``workdir``, for the block; ended with its children.

    Host names other than the loopback address resolve to nothing: pages reach only the servers under
    test (no waiting on fonts, banners or telemetry from the internet).
    """
    from websockets.sync.client import connect  # a dependency of prefect

    profile = workdir / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)  # a fresh profile: no DevToolsActivePort of an earlier browser
    cmd = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-address=127.0.0.1",
           "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]
    log = workdir / "chromium.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().split()) == 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{executable} did not open its DevTools port; log {log}:\n"
                                     + log.read_text(errors="replace")[-1500:])
            time.sleep(0.2)
        port, path = port_file.read_text().split()
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout) as ws:
            yield Browser(ws)
    finally:
        _end_group(proc, grace=5.0)
        shutil.rmtree(profile, ignore_errors=True)
