"""Fixtures of the Hub tests."""

from __future__ import annotations

import pytest
from huggingface_hub import constants as hf_constants

from tests.helpers.hub_server import serve


@pytest.fixture
def online_hub(tmp_path, monkeypatch):
    """Loopback Hub + empty HF cache in tmp_path, with offline mode switched off for this test only."""
    with serve() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        yield hub
