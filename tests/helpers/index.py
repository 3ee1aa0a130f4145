"""Generated features for index tests: clustered unit vectors, as arrays or as a shard folder, and index
writers run as real processes (to be killed, or to race)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dinofeat.features.stores.shards import write_feature_shards
from dinofeat.search.index import IndexOptions
from tests.helpers.common import REPO_ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
#: Small enough to train in a second, large enough for an IVF index (exact up to 200 rows here).
IVF = IndexOptions(exact_limit=200, nprobe=8)


def clustered(count: int, dim: int = 32, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """(count, dim) float32 unit rows around ``clusters`` random centres (the same centres for every seed)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    rows = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def paths(count: int, prefix: str = "img") -> list[str]:
    return [f"/data/{prefix}/{row:05d}.jpg" for row in range(count)]


def shard_folder(folder: Path, shards: int = 6, rows: int = 250, dim: int = 32, seed: int = 0,
                 prefix: str = "img") -> np.ndarray:
    """A complete shard folder of ``shards`` x ``rows`` clustered features; returns them (unit rows)."""
    features = clustered(shards * rows, dim, seed)
    names = paths(shards * rows, prefix)
    write_feature_shards(folder, ((names[s * rows:(s + 1) * rows], features[s * rows:(s + 1) * rows])
                                  for s in range(shards)), model="tiny")
    return features


def python(code: str, **env: str) -> subprocess.Popen[str]:
    """``python -c code`` in this checkout, output captured."""
    return subprocess.Popen([sys.executable, "-c", code], env={**ENV, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out
