"""Running the app in a background thread on a loopback port: for tests, benchmarks and
notebooks (`mmcl serve` runs it in the foreground with `uvicorn.run`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def serve_in_background(app, host: str = "127.0.0.1", timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port of `host` while in the block; yields its URL.

    >>> # with serve_in_background(create_app("photos.index")) as url:
    >>> #     httpx.get(url + "/search", params={"q": "a red car"}).json()
    """
    import uvicorn

    # The socket is bound here, port 0: the system picks a free port and no other process can
    # take it between choosing and binding.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
