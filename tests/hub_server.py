"""A loopback HTTP server standing in for the Hugging Face Hub (``HF_ENDPOINT``) in tests.

It answers ``HEAD`` / ``GET /{org}/{repo}/resolve/{revision}/{filename}`` with the headers
``huggingface_hub.hf_hub_download`` reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``)
and records every request path.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[str] = []
        self.url = ""

    def add(self, repo_id: str, filename: str, payload: bytes) -> None:
        self.files[(repo_id, filename)] = payload


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _find(self) -> bytes | None:
            hub.requests.append(f"{self.command} {self.path}")
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            return hub.files.get(("/".join(parts[:2]), "/".join(parts[4:])))

        def _headers(self, payload: bytes | None) -> None:
            if payload is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._headers(self._find())

        def do_GET(self) -> None:
            payload = self._find()
            self._headers(payload)
            if payload is not None:
                self.wfile.write(payload)

    return Handler


@contextmanager
def serve() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
