"""Shared fixtures. Tests never touch the network: the Hub is forced offline here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINOFEAT_SHARED", REPO_ROOT.parent / "shared"))

TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the read-only ../shared folder beside the project root)")
    return path


@pytest.fixture
def golden() -> Path:
    return shared_path("golden")


@pytest.fixture
def photos() -> Path:
    return shared_path("data", "photos")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
