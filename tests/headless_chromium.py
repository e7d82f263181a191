"""A headless Chromium driven through the DevTools protocol over a pipe, for the browser tests.

Chromium started with --remote-debugging-pipe reads protocol commands from its file descriptor
3 and writes answers and events to 4, each a JSON message ended by a NUL byte: a client needs
no WebSocket library, only the standard library. The browser is Debian's `chromium` package.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time

INSTALL = "apt-get install -y chromium  (make setup installs it)"


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise FileNotFoundError(f"the browser tests need Chromium, which is not installed: {INSTALL}")


class Chromium:
    """One headless browser with one page; `call` sends a command to the page and waits for
    its answer (events that arrive meanwhile are kept for `wait_for_event`)."""

    def __init__(self, timeout: float = 20.0):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="mmcl-chromium-")
        self._log = open(os.path.join(self._profile.name, "stderr.txt"), "wb")  # noqa: SIM115
        # The child's ends, moved above 9 so that placing them at 3 and 4 overwrites neither.
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        child_ends = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            for fd in (to_browser_read, from_browser_write)
        ]
        os.close(to_browser_read)
        os.close(from_browser_write)

        def hand_over_pipes():  # in the child, before exec: its ends become fds 3 and 4
            os.dup2(child_ends[0], 3)
            os.dup2(child_ends[1], 4)

        flags = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}",
            "--no-first-run",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--window-size=1000,800",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.process = subprocess.Popen(
            [find_chromium(), *flags, "about:blank"],
            preexec_fn=hand_over_pipes,
            close_fds=False,  # else fds 3 and 4 are closed after preexec_fn; Python's own
            # descriptors are not inheritable, so no others reach the browser
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        for fd in child_ends:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]

    def call(self, method: str, **params) -> dict:
        return self._call(method, params, self._session)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"JavaScript error: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def open(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        self.call("Page.enable")
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for_event("Page.loadEventFired")

    def type(self, text: str) -> None:
        """Key presses of `text` into the focused element, as a user types."""
        for character in text:
            self.call("Input.dispatchKeyEvent", type="keyDown", text=character, key=character)
            self.call("Input.dispatchKeyEvent", type="keyUp", key=character)

    def press_enter(self) -> None:
        keys = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **keys)
        self.call("Input.dispatchKeyEvent", type="keyUp", **keys)

    def wait_until(self, expression: str, timeout: float | None = None):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied: {expression}")
            time.sleep(0.05)
        return value

    def wait_for_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events:
                if event.get("method") == method:
                    self._events.remove(event)
                    return event
            self._events.append(self._receive(deadline))

    def close(self) -> None:
        try:
            self._call("Browser.close", {})
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, params: dict, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(self._exited()) from None
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") != self._next_id:
                self._events.append(answer)
                continue
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            return answer["result"]

    def _exited(self) -> str:
        with open(os.path.join(self._profile.name, "stderr.txt"), errors="replace") as log:
            last = log.read().strip().splitlines()[-3:]
        return f"Chromium exited (code {self.process.poll()}): {' | '.join(last)}"

    def _receive(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(self._exited())
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)
