"""Real processes writing one index: a SIGKILL mid-append leaves the previous index intact and searchable,
and concurrent appends lose nothing."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from dinofeat.search.index import ImageIndex
from tests.helpers.index import IVF, clustered, finish, paths, python

# An append whose writer stops (and is killed) at one of two moments: after encoding its rows into the
# staging folder, or inside the commit, after the new files were moved into the index and the lists
# merged, just before the manifest is replaced.
STALLED_APPEND = """
import sys, time
import numpy as np, torch
import dinofeat.search.index.build as build
import dinofeat.search.index.commit as commit
from dinofeat.search.index import ImageIndex

def stall(real):
    def stalled(*args, **kwargs):
        print("stalled", flush=True)
        time.sleep(120)
        return real(*args, **kwargs)
    return stalled

if sys.argv[2] == "encoded":
    build._Encoder.finish = stall(build._Encoder.finish)
else:
    commit.write_manifest = stall(commit.write_manifest)
rows = np.load(sys.argv[3])
ImageIndex.extend(sys.argv[1], [f"/data/new/{i:05d}.jpg" for i in range(len(rows))], torch.from_numpy(rows),
                  model="m", kind="cls")
"""

CONCURRENT_APPEND = """
import sys
import numpy as np, torch
from dinofeat.search.index import ImageIndex
rows = np.load(sys.argv[2])
index, added = ImageIndex.extend(sys.argv[1], [f"/data/{sys.argv[3]}/{i:05d}.jpg" for i in range(len(rows))],
                                 torch.from_numpy(rows), model="m", kind="cls")
print(added)
"""


def _script(code: str, *argv: str):
    return python(f"import sys; sys.argv = ['x', *{list(argv)!r}]\n{code}")


@pytest.mark.parametrize("moment", ["encoded", "committing"])
def test_a_sigkill_mid_append_leaves_the_previous_index_intact(tmp_path, moment):
    folder = tmp_path / "index"
    features, queries = clustered(1200), clustered(20, seed=4)
    ImageIndex.extend(folder, paths(1200), torch.from_numpy(features), model="m", kind="cls", options=IVF)
    before = ImageIndex.open(folder)
    expected = before.search(queries, top=5)
    np.save(tmp_path / "more.npy", clustered(300, seed=9))
    writer = _script(STALLED_APPEND, str(folder), moment, str(tmp_path / "more.npy"))
    assert writer.stdout is not None and writer.stdout.readline().strip() == "stalled"
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    leftovers = {p.name for p in folder.iterdir()} - {"manifest.json", *before.manifest.files()}
    assert leftovers  # the killed writer left files behind ...
    after = ImageIndex.open(folder)  # ... which no reader sees
    assert after.generation == before.generation and len(after) == 1200
    assert after.search(queries, top=5) == expected
    after.verify()
    # The next writer adds the rows and removes what the killed one left.
    more = torch.from_numpy(np.load(tmp_path / "more.npy"))
    index, added = ImageIndex.extend(folder, paths(300, "new"), more, model="m", kind="cls")
    assert added == 300 and len(index) == 1500
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *index.manifest.files()])


def test_concurrent_appends_to_a_compressed_index_lose_nothing(tmp_path):
    folder = tmp_path / "index"
    ImageIndex.extend(folder, paths(600), torch.from_numpy(clustered(600)), model="m", kind="cls",
                      options=IVF)
    batches = []
    for number in range(4):
        np.save(tmp_path / f"batch{number}.npy", clustered(150, seed=20 + number))
        batches.append(_script(CONCURRENT_APPEND, str(folder), str(tmp_path / f"batch{number}.npy"),
                               f"batch{number}"))
    assert [finish(process).strip() for process in batches] == ["150"] * 4
    index = ImageIndex.open(folder)
    assert len(index) == 1200 and len(set(index.files)) == 1200
    for number in range(4):
        rows = np.load(tmp_path / f"batch{number}.npy")
        assert index.search(rows[:1], top=1)[0][0].path == f"/data/batch{number}/00000.jpg"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *index.manifest.files()])
