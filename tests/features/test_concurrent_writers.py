"""Several real `dinofeat` processes writing one output at once lose nothing; a killed lock holder
blocks no one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinofeat.cli import main
from dinofeat.features.stores.arrays import load_features, save_features
from dinofeat.search.index import ImageIndex
from dinofeat.utils.locking import LockTimeoutError, exclusive, lock_path
from tests.helpers.evaluation import save_tiny_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
COMMON = ["--workers", "0", "--no-progress", "--device", "cpu"]


def _folder(root: Path, count: int, seed: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{index:02d}.png")
    return root


# The real CLI, with every index save slowed by 0.3 s: that widens the read-modify-write window so
# that without the lock the processes overwrite each other's batches every time (checked by removing
# the lock: the index then ends with fewer than 80 images).
SLOW_SAVE_CLI = """
import sys, time
from dinofeat.cli import main
from dinofeat.search.index import ImageIndex
save = ImageIndex.save
def slow_save(self):
    time.sleep(0.3)
    save(self)
ImageIndex.save = slow_save
raise SystemExit(main(sys.argv[1:]))
"""


def _dinofeat(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SLOW_SAVE_CLI, *argv], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-2000:]


def test_four_index_processes_extending_one_index_keep_every_image(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    index_dir = tmp_path / "index"
    assert main(["index", str(_folder(tmp_path / "base", 16, 0)), "-o", str(index_dir), "--model", str(model),
                 *COMMON]) == 0
    folders = [_folder(tmp_path / f"batch{n}", 16, n + 1) for n in range(4)]
    _finish([_dinofeat("index", str(f), "-o", str(index_dir), "--model", str(model), *COMMON)
             for f in folders])
    index = ImageIndex.open(index_dir)
    expected = {str(p) for f in [tmp_path / "base", *folders] for p in f.iterdir()}
    assert len(index) == 80 and set(index.files) == expected
    assert index.features.shape == (80, 32)
    # Each batch's rows are its own images' descriptors, whatever order the processes committed in.
    reference = ImageIndex.open(_single_index(tmp_path, model, folders[2]))
    rows = [index.files.index(name) for name in reference.files]
    assert np.allclose(index.features[rows].numpy(), reference.features.numpy(), atol=1e-6)
    # Five commits, and nothing left behind: the folder holds the manifest and the files it lists.
    assert index.generation == 5
    assert sorted(p.name for p in index_dir.iterdir()) == sorted(["manifest.json", *index.manifest.files()])


def _single_index(tmp_path: Path, model: Path, folder: Path) -> Path:
    out = tmp_path / "alone"
    assert main(["index", str(folder), "-o", str(out), "--model", str(model), *COMMON]) == 0
    return out


def test_writers_racing_on_one_npy_leave_a_consistent_pair(tmp_path):
    # Threads stand in for processes here (the lock is an OS lock per open file, so it serialises
    # threads too); without it, one writer's array ends beside the other's file list.
    out = tmp_path / "feats.npy"
    errors: list[BaseException] = []

    def writer(rows: int) -> None:
        try:
            for _ in range(30):
                names = [f"{rows}-{i}.png" for i in range(rows)]
                save_features(out, torch.full((rows, 4), float(rows)), names)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(rows,)) for rows in (3, 5)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if out.exists():
            with exclusive(out):  # a reader that respects the writers' lock sees a matching pair
                features, files = load_features(out)
            assert len(files) == features.shape[0] == int(features[0, 0])
    for thread in threads:
        thread.join()
    assert not errors
    features, files = load_features(out)
    assert len(files) == features.shape[0] in (3, 5)


def test_a_killed_lock_holder_blocks_no_one(tmp_path):
    target = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dinofeat.utils.locking import exclusive\n"
         f"with exclusive({str(target)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        env=ENV, text=True, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError, match=r"stayed locked by another process .*\.index\.lock"), \
                exclusive(target, timeout=0.2):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with exclusive(target, timeout=5):  # the kernel released the dead holder's lock
        assert lock_path(target).exists()


def test_a_reader_whose_generation_is_replaced_reads_the_new_one(tmp_path, monkeypatch):
    import dinofeat.search.index.image_index as image_index

    first = torch.nn.functional.normalize(torch.randn(2, 4))
    index_dir = tmp_path / "index"
    ImageIndex.extend(index_dir, ["/a.png", "/b.png"], first, model="m", kind="cls")
    real_searcher = image_index.Searcher
    calls = []

    def writer_commits_meanwhile(directory, manifest):
        if not calls:  # a writer commits generation 2 (merging away 1's part) just before the reader opens 1
            calls.append(manifest.generation)
            more = torch.nn.functional.normalize(torch.randn(2, 4))
            ImageIndex.extend(index_dir, ["/c.png", "/d.png"], more, model="m", kind="cls")
        return real_searcher(directory, manifest)

    monkeypatch.setattr(image_index, "Searcher", writer_commits_meanwhile)
    reopened = ImageIndex.open(index_dir)
    assert calls == [1]
    assert reopened.generation == 2 and reopened.files == ["/a.png", "/b.png", "/c.png", "/d.png"]
