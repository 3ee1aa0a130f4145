"""Near-duplicates of an index of any size (range search + exact re-check), and the commands on indexes
of shard folders: `dinofeat index` (options), `dinofeat search` of .npy descriptors, `dinofeat dedup`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dinofeat.cli import main
from dinofeat.search.dedup import duplicate_groups, index_duplicate_groups
from dinofeat.search.index import ImageIndex
from tests.helpers.index import IVF, clustered, paths, shard_folder


def _with_copies(count: int) -> np.ndarray:
    """Clustered rows where rows 700, 900 copy row 10 and row 1500 copies row 20 (up to a little noise)."""
    rows = clustered(count)
    noise = np.random.default_rng(5).standard_normal((3, rows.shape[1])) * 0.01
    for (copy, original), extra in zip(((700, 10), (900, 10), (1500, 20)), noise, strict=True):
        rows[copy] = rows[original] + extra
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("options", [None, IVF], ids=["exact", "compressed"])
def test_index_duplicates_equal_the_all_pairs_groups(tmp_path, options):
    rows = _with_copies(2000)
    index, _ = ImageIndex.extend(tmp_path / "index", paths(2000), torch.from_numpy(rows), model="m",
                                 kind="cls", options=options)
    expected = duplicate_groups(torch.from_numpy(rows), 0.97)
    assert expected == [[10, 700, 900], [20, 1500]]
    assert index_duplicate_groups(index, 0.97, chunk=300) == expected
    loose = duplicate_groups(torch.from_numpy(rows), 0.8)  # many pairs: candidates far beyond the copies
    assert index_duplicate_groups(index, 0.8, chunk=300) == loose


def test_index_search_and_dedup_commands_on_a_shard_folder(tmp_path, capsys):
    features = shard_folder(tmp_path / "shards")
    index = tmp_path / "index"
    assert main(["index", str(tmp_path / "shards"), "-o", str(index), "--index-type", "PCAR32,IVF32,PQ8",
                 "--nprobe", "8", "--no-progress"]) == 0
    assert "added 1500 images, 1500 in total" in capsys.readouterr().out
    opened = ImageIndex.open(index)
    assert opened.method.factory == "PCAR32,IVF32,PQ8" and opened.method.nprobe == 8
    np.save(tmp_path / "queries.npy", features[[3, 1000]])
    assert main(["search", str(index), str(tmp_path / "queries.npy"), "--top", "2", "--json",
                 str(tmp_path / "hits.json")]) == 0
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert [h["query"] for h in hits] == [f"{tmp_path / 'queries.npy'}[0]", f"{tmp_path / 'queries.npy'}[1]"]
    assert [h["results"][0]["path"] for h in hits] == ["/data/img/00003.jpg", "/data/img/01000.jpg"]
    assert hits[0]["results"][0]["id"] == 3 and hits[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(["dedup", str(index), "--threshold", "0.999", "--json", str(tmp_path / "dups.json"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "dups.json").read_text())["groups"] == []
    assert "0 groups of near-duplicates among 1500 images" in capsys.readouterr().out


def test_bad_index_options_are_clear_errors(tmp_path, capsys):
    shard_folder(tmp_path / "shards", shards=1, rows=50)
    cases = [
        (["--memory-budget", "lots"], "not a size: 'lots'"),
        (["--index-type", "HNSW32"], "index type 'HNSW32' has no inverted lists"),
        (["--index-type", "IVF8,PQ8", "--refine", "Bogus"], "invalid refine codec 'Bogus'"),
        (["--index-type", "IVF8,PQ8"], "50 are too few (at least 256); use an exact index"),
    ]
    for options, message in cases:
        argv = ["index", str(tmp_path / "shards"), "-o", str(tmp_path / "index"), "--no-progress", *options]
        assert main(argv) == 2, options
        assert message in capsys.readouterr().err, options
    assert not (tmp_path / "index" / "manifest.json").exists()
    assert main(["dedup", str(tmp_path / "shards"), "--threshold", "0.9"]) == 2
    assert "index it first" in capsys.readouterr().err
