"""Running the demo app with uvicorn on a socket bound before it starts, so that port 0 (an
ephemeral port, for tests) gives a known address."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from starlette.applications import Starlette

STARTUP_SECONDS = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port).

    Raises:
        OSError: the address is taken or cannot be bound; the message names it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(64)
    return sock


class DemoServer:
    """uvicorn serving an app on a bound socket: :meth:`serve_forever`, or a thread as a context manager.

    Args:
        app: The ASGI app.
        host: Address to listen on.
        port: Port (0: a free one, see :attr:`port`).
        log_level: uvicorn's.
        sock: An already bound socket (from :func:`bind`) instead of ``host:port``.

    Example:
        >>> with DemoServer(create_app(), port=0) as server:  # doctest: +SKIP
        ...     urllib.request.urlopen(server.url + "/api/state")
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 sock: socket.socket | None = None) -> None:
        import uvicorn

        self.socket = sock if sock is not None else bind(host, port)
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def __enter__(self) -> DemoServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name="dinofeat-demo", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
