"""Shared fixtures. Tests never touch the network: the Hub is forced offline here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tests.helpers.common import REPO_ROOT, SHARED, TINY_VIT, shared_path  # noqa: F401 (re-exported)


@pytest.fixture
def golden() -> Path:
    return shared_path("golden")


@pytest.fixture
def photos() -> Path:
    return shared_path("data", "photos")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
