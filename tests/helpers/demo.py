"""Talking to a running demo server over loopback HTTP, and files that are not (good) images."""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from typing import Any

LOOPBACK_TIMEOUT = 60


def call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON) of one request; 4xx / 5xx answers are returned, not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=LOOPBACK_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_json(url: str, payload: Any) -> tuple[int, Any]:
    return call(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def upload(base: str, data: bytes, name: str) -> tuple[int, Any]:
    return call(f"{base}/api/analyse", data, {"X-Filename": name, "Content-Type": "application/octet-stream"})


def wait_for_model(base: str, seconds: float = 30.0) -> dict[str, str]:
    """The model status once it is no longer loading."""
    deadline = time.monotonic() + seconds
    while True:
        _, status = call(f"{base}/api/model")
        if status["state"] != "loading" or time.monotonic() > deadline:
            return dict(status)
        time.sleep(0.05)


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
