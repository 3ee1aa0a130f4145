"""Features streamed to disk: same rows as in-memory extraction, atomic, sharded over torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import dinofeat
from dinofeat.data.files import scan_image_folder
from dinofeat.features.image_files import extract_features
from dinofeat.features.stores.cache import _interleave, cache_key, cached_features, stream_features
from dinofeat.utils.errors import ImageReadError
from tests.helpers.common import free_port
from tests.helpers.evaluation import make_image_folder, one_thread, save_tiny_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tmp_path):
    model = dinofeat.load(save_tiny_model(tmp_path / "model"), device="cpu")
    return model, scan_image_folder(make_image_folder(tmp_path / "data", classes=3, per_class=3)).files


def test_streamed_features_equal_in_memory_ones(tiny, tmp_path):
    model, files = tiny
    path = stream_features(model, files, tmp_path / "f.npy", batch_size=2, num_workers=0, progress=False)
    expected = extract_features(model, files, batch_size=2, num_workers=0, progress=False)
    assert path == tmp_path / "f.npy"
    np.testing.assert_array_equal(np.load(path), expected.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f.npy", "model"]  # no shard left


def test_cache_is_reused_only_for_the_same_key(tiny, tmp_path):
    model, files = tiny
    key = cache_key(model="tiny", files=[str(f) for f in files])
    first = cached_features(model, files, tmp_path / "cache", "set", key, num_workers=0, progress=False)
    path = tmp_path / "cache" / f"set-{key}.npy"
    stamp = path.stat().st_mtime_ns
    again = cached_features(model, files, tmp_path / "cache", "set", key, num_workers=0, progress=False)
    assert path.stat().st_mtime_ns == stamp and np.array_equal(first, again)
    assert cache_key(model="tiny", files=[str(f) for f in files[:-1]]) != key
    # A file under the key's name with the wrong row count is refused, not used.
    with pytest.raises(ValueError, match="delete the file"):
        cached_features(model, files[:-1], tmp_path / "cache", "set", key, num_workers=0, progress=False)


def test_a_failed_extraction_leaves_no_file_behind(tiny, tmp_path):
    model, files = tiny
    files[4].write_bytes(b"not an image")
    with pytest.raises(ImageReadError):
        stream_features(model, files, tmp_path / "out" / "f.npy", batch_size=2, num_workers=0, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_interleave_restores_the_original_order(tmp_path):
    rows = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    shards = []
    for rank in range(3):  # shard_indices: rank, rank + 3, ...
        shard = tmp_path / f"s{rank}.npy"
        np.save(shard, rows[rank::3])
        shards.append(shard)
    _interleave(shards, tmp_path / "merged.npy", 7)
    np.testing.assert_array_equal(np.load(tmp_path / "merged.npy"), rows)


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys, torch, dinofeat
    from pathlib import Path
    from dinofeat.utils.distributed import init_from_env, rank_and_world
    from dinofeat.data.files import scan_image_folder
    from dinofeat.features.stores.cache import stream_features
    torch.set_num_threads(1)
    assert init_from_env()
    model = dinofeat.load(sys.argv[1], device="cpu")
    files = scan_image_folder(sys.argv[2]).files
    out = stream_features(model, files, Path(sys.argv[3]), batch_size=2, num_workers=0, progress=False)
    assert (out is not None) == (rank_and_world()[0] == 0)
    torch.distributed.destroy_process_group()
""")


@pytest.mark.slow  # ~15 s: two fresh Python processes importing torch and timm
def test_torchrun_streams_shards_and_merges_them_in_order(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "data", classes=3, per_class=3)
    script = tmp_path / "stream.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "out" / "f.npy"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(model_dir),
        str(data),
        str(out),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = dinofeat.load(model_dir, device="cpu")
    single = extract_features(model, scan_image_folder(data).files, num_workers=0, progress=False)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), single)
    assert [p.name for p in out.parent.iterdir()] == ["f.npy"]
