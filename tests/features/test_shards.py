"""Large-scale extraction into Parquet shards: equal to embed(), resumable after SIGKILL, torchrun ranks,
folders / file lists / tar shards, and clear errors for damaged inputs and shards."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.data.collections import plan_units
from dinofeat.features.stores.shards import (
    ExtractionSettings,
    ShardError,
    extract_to_shards,
    load_shards,
    read_shards,
)
from tests.helpers.common import REPO_ROOT
from tests.helpers.evaluation import save_tiny_model

REPO = REPO_ROOT
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
# The real CLI, with every shard write slowed by 0.4 s so that a SIGKILL lands between two shards.
SLOW_SHARDS_CLI = """
import sys, time
import dinofeat.features.stores.shards as extraction
from dinofeat.cli import main
write = extraction._write_shard
def slow_write(*args):
    write(*args)
    time.sleep(0.4)
extraction._write_shard = slow_write
raise SystemExit(main(sys.argv[1:]))
"""


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        size = (40 + index % 3, 44)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _embed(model: Path, out: Path, *inputs: str) -> list[str]:
    return ["embed", *inputs, "-o", str(out), "-m", str(model), "--device", "cpu", "--no-progress",
            "--batch-size", "3"]


def test_shards_hold_what_embed_gives_with_path_size_and_metadata(model, tmp_path):
    folder = _images(tmp_path / "imgs", 10)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / f'{i:03d}.png'}\n" for i in (7, 2)))
    tar = tmp_path / "shard.tar"
    with tarfile.open(tar, "w") as archive:
        for index in (0, 1):
            archive.add(folder / f"{index:03d}.png", arcname=f"s/{index:06d}.png")
            label = json.dumps({"label": index}).encode()
            info = tarfile.TarInfo(f"s/{index:06d}.json")
            info.size = len(label)
            archive.addfile(info, io.BytesIO(label))
    out = tmp_path / "out"
    argv = [*_embed(model, out, str(folder), str(tar), "--files-from", str(listing)), "--shard-size", "4",
            "--workers", "2"]
    assert main(argv) == 0
    features, paths = load_shards(out)
    files = [folder / f"{i:03d}.png" for i in range(10)]
    expected_paths = [*map(str, files), f"{tar}#s/000000.png", f"{tar}#s/000001.png",
                      str(files[7]), str(files[2])]
    assert paths == expected_paths
    extractor = dinofeat.load(model, device="cpu")
    expected = extractor.embed([*files, files[0], files[1], files[7], files[2]])
    assert np.allclose(features.numpy(), expected.numpy(), atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    # 10 folder images in shards of 4 (4, 4, 2), the tar, then the list: 5 shards
    assert manifest["complete"] and manifest["count"] == 14 and manifest["dim"] == 32
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2, 2, 2]
    table = read_shards(out)
    assert table.column_names == ["path", "cls", "width", "height", "metadata"]
    assert table.column("height").to_pylist()[:3] == [40, 41, 42]
    assert table.column("metadata").to_pylist()[10:12] == ['{"json": "{\\"label\\": 0}"}',
                                                           '{"json": "{\\"label\\": 1}"}']
    assert pq.read_table(out / "shard-000000.parquet").schema.field("cls").type.list_size == 32
    # Finished: the same command again only checks the shards.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert main(argv) == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}


def test_a_sigkilled_run_restarted_gives_the_uninterrupted_result(model, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", 24)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*_embed(model, whole, str(folder)), "--shard-size", "3", "--workers", "0"]) == 0
    argv = [*_embed(model, killed, str(folder)), "--shard-size", "3", "--workers", "0"]
    process = subprocess.Popen([sys.executable, "-c", SLOW_SHARDS_CLI, *argv], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(killed.glob("shard-*.parquet"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done = sorted(p.name for p in killed.glob("shard-*.parquet"))
    assert 2 <= len(done) < 8 and not json.loads((killed / "manifest.json").read_text())["complete"]
    with pytest.raises(ShardError, match="not complete"):
        read_shards(killed)
    # A shard finished before the kill is damaged afterwards: the resumed run names it and changes nothing.
    first = killed / done[0]
    good = first.read_bytes()
    first.write_bytes(good[: len(good) // 2])
    kept = {p.name: p.read_bytes() for p in killed.iterdir()}
    assert main(argv) == 2
    assert f"shard {first} is corrupt" in capsys.readouterr().err
    assert kept == {p.name: p.read_bytes() for p in killed.iterdir()}
    first.write_bytes(good)
    assert main(argv) == 0
    assert f"{len(done)} shard(s) already done" in capsys.readouterr().err
    assert read_shards(killed).equals(read_shards(whole))


def test_torchrun_ranks_write_their_own_shards_into_one_manifest(model, tmp_path):
    folder = _images(tmp_path / "imgs", 10)
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main([*_embed(model, single, str(folder)), "--shard-size", "2", "--workers", "0"]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dinofeat.cli", *_embed(model, multi, str(folder)), "--shard-size", "2",
               "--workers", "0"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("new shard(s)") == 2  # one report per rank, each for its own shards
    assert read_shards(multi).equals(read_shards(single))
    assert json.loads((multi / "manifest.json").read_text())["count"] == 10


def test_unreadable_images_and_tar_shards(model, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", 5)
    (folder / "002b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = [*_embed(model, out, str(folder)), "--shard-size", "3", "--workers", "0"]
    assert main(argv) == 2
    assert "002b.png" in capsys.readouterr().err
    assert (out / "shard-000000.parquet").exists()  # the shard before the bad image is kept
    assert main([*argv, "--skip-unreadable"]) == 0
    assert "skipped 1 unreadable image(s): " + str(folder / "002b.png") in capsys.readouterr().err
    assert len(read_shards(out)) == 5
    meta = json.loads(pq.read_schema(out / "shard-000001.parquet").metadata[b"dinofeat"])
    assert meta["skipped"] == [str(folder / "002b.png")]
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\0" * 100 + b"garbage" * 200)
    assert main(_embed(model, tmp_path / "out2", str(broken))) == 2
    assert f"cannot read tar shard {broken}" in capsys.readouterr().err


def test_an_output_folder_of_another_run_is_refused(model, tmp_path):
    folder = _images(tmp_path / "imgs", 4)
    out = tmp_path / "out"
    extractor = dinofeat.load(model, device="cpu")
    units = plan_units([folder], 2)
    extract_to_shards(extractor, units, out, ExtractionSettings("tiny"), progress=False)
    with pytest.raises(ShardError, match=r"another run \(different size\)"):
        extract_to_shards(extractor, units, out, ExtractionSettings("tiny", size=32), progress=False)
    with pytest.raises(ShardError, match=r"another run \(different input files\)"):
        extract_to_shards(extractor, plan_units([folder / "000.png"], 2), out, ExtractionSettings("tiny"))
    with pytest.raises(FileNotFoundError, match="no such image file, folder or tar shard"):
        plan_units([tmp_path / "missing"], 2)


def test_index_builds_from_a_shard_folder_without_a_model_pass(model, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", 5)
    shards = tmp_path / "shards"
    assert main([*_embed(model, shards, str(folder)), "--shard-size", "2", "--workers", "0"]) == 0
    index_dir = tmp_path / "index"
    assert main(["index", str(shards), "-o", str(index_dir), "--no-progress"]) == 0
    assert "added 5 images, 5 in total" in capsys.readouterr().out
    direct = tmp_path / "direct"
    assert main(["index", str(folder), "-o", str(direct), "--model", str(model), "--workers", "0",
                 "--no-progress", "--device", "cpu"]) == 0
    from dinofeat.search.index import ImageIndex

    built, expected = ImageIndex.open(index_dir), ImageIndex.open(direct)
    assert built.files == expected.files and built.model == expected.model
    assert np.allclose(built.features.numpy(), expected.features.numpy(), atol=1e-6)
    assert main(["index", str(shards), "-o", str(index_dir), "--gem"]) == 2
    assert "CLS features only" in capsys.readouterr().err


def test_progress_shows_images_per_second_and_the_eta(model, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", 6)
    argv = ["embed", str(folder), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu",
            "--batch-size", "2", "--shard-size", "3", "--workers", "0"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(r"6/6 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s\]", err), err[-500:]
