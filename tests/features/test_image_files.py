"""Dataset feature extraction: ImageFolder labels, caching, torchrun sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dinofeat
from dinofeat.data.files import scan_image_folder
from dinofeat.features.image_files import drop_unreadable, extract_features
from dinofeat.features.stores.feature_set import FeatureSet, extract_folder
from tests.helpers.common import free_port
from tests.helpers.evaluation import make_image_folder, save_tiny_model


@pytest.fixture
def tiny(tmp_path):
    return save_tiny_model(tmp_path / "model"), make_image_folder(tmp_path / "data", classes=3, per_class=3)


def test_scan_matches_imagefolder_order(tiny):
    from torchvision.datasets import ImageFolder
    _, data = tiny
    listing = scan_image_folder(data)
    reference = ImageFolder(str(data))
    assert listing.class_names == reference.classes
    assert [(str(f), y) for f, y in zip(listing.files, listing.labels, strict=True)] == reference.samples


def test_extract_equals_embed_and_roundtrips(tiny, tmp_path):
    model_dir, data = tiny
    model = dinofeat.load(model_dir, device="cpu")
    fs = extract_folder(model, data, model="tiny", batch_size=4, num_workers=0, progress=False)
    assert fs is not None
    torch.testing.assert_close(fs.features, model.embed([*scan_image_folder(data).files]))
    assert fs.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    fs.save(tmp_path / "f.safetensors")
    back = FeatureSet.load(tmp_path / "f.safetensors", model="tiny", kind="cls")
    assert torch.equal(back.features, fs.features) and back.files == fs.files
    assert back.class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="model 'tiny', not 'other'"):
        FeatureSet.load(tmp_path / "f.safetensors", model="other")


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class contains no image"):
        scan_image_folder(tmp_path / "flat")
    (tmp_path / "not_features.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not_features\.safetensors is not a readable safetensors"):
        FeatureSet.load(tmp_path / "not_features.safetensors")


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys, torch, dinofeat
    from dinofeat.utils.distributed import init_from_env, rank_and_world
    from dinofeat.features.stores.feature_set import extract_folder
    torch.set_num_threads(1)
    assert init_from_env()
    assert rank_and_world()[1] == 2
    model = dinofeat.load(sys.argv[1], device="cpu")
    fs = extract_folder(model, sys.argv[2], model="tiny", batch_size=2, num_workers=0, progress=False)
    if rank_and_world()[0] == 0:
        fs.save(sys.argv[3])
    else:
        assert fs is None
    torch.distributed.destroy_process_group()
""")


@pytest.mark.slow  # ~15 s: two fresh Python processes importing torch and timm
def test_torchrun_two_cpu_processes_equal_single_process(tiny, tmp_path):
    model_dir, data = tiny
    script = tmp_path / "extract.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "dist.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(script), str(model_dir), str(data), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    single = extract_folder(dinofeat.load(model_dir, device="cpu"), data, model="tiny", num_workers=0,
                            progress=False)
    distributed = FeatureSet.load(out)
    assert single is not None and distributed.files == single.files  # 9 images over 2 ranks: uneven shards
    torch.testing.assert_close(distributed.features, single.features)
    assert torch.equal(distributed.labels, single.labels)


def test_unreadable_image_stops_with_one_line_or_is_skipped(tiny):
    model_dir, data = tiny
    model = dinofeat.load(model_dir, device="cpu")
    listing = scan_image_folder(data)
    broken = data / "class_1" / "img_1.png"
    broken.write_bytes(b"\x89PNG truncated")
    # Through a worker process, so that the error crosses the DataLoader as a message, not a traceback.
    with pytest.raises(dinofeat.ImageReadError, match=r"^cannot read image .*img_1\.png") as error:
        extract_features(model, listing.files, num_workers=1, progress=False)
    assert "DataLoader worker" not in str(error.value)
    features = extract_features(model, listing.files, num_workers=1, progress=False, skip_unreadable=True)
    assert features is not None and features.shape == (9, model.embed_dim)
    kept, kept_features, skipped = drop_unreadable(listing.files, features)
    assert skipped == [broken] and broken not in kept and len(kept) == 8
    torch.testing.assert_close(kept_features, model.embed(kept))
