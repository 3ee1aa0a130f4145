"""A loopback HTTP server standing in for the Hugging Face Hub (``HF_ENDPOINT``) in tests.

It answers ``HEAD`` / ``GET /{org}/{repo}/resolve/{revision}/{filename}`` with the headers
``huggingface_hub.hf_hub_download`` reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``)
and records every request path. A repository marked with :meth:`FakeHub.gate` answers as the
real Hub does for a gated repository: 401 without a token, 403 with a token that has no access,
``X-Error-Code: GatedRepo``.
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
        self.gated: set[str] = set()
        self.authorised_tokens: set[str] = set()
        self.url = ""

    def add(self, repo_id: str, filename: str, payload: bytes) -> None:
        self.files[(repo_id, filename)] = payload

    def gate(self, repo_id: str, authorised_tokens: tuple[str, ...] = ()) -> None:
        """Make ``repo_id`` gated: only requests with one of ``authorised_tokens`` get its files."""
        self.gated.add(repo_id)
        self.authorised_tokens.update(authorised_tokens)


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

        def _refused(self) -> bool:
            """Answer 401 / 403 for a gated repository without an authorised token, as the Hub does."""
            repo = "/".join(self.path.strip("/").split("/")[:2])
            if repo not in hub.gated:
                return False
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token in hub.authorised_tokens:
                return False
            status = 403 if token else 401
            reason = ("and you are not in the authorized list" if token
                      else "You must have access to it and be authenticated to access it")
            self.send_response(status)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", f"Access to model {repo} is restricted. {reason}.")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True

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
            if not self._refused():
                self._headers(self._find())

        def do_GET(self) -> None:
            if self._refused():
                return
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
