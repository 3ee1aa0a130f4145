"""Indexes of `dinofeat embed` shard folders: streamed, exact vectors read in place from the shards, and
built by several processes (RANK / WORLD_SIZE) equal to one process's build."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from dinofeat.features.stores.shard_pages import ShardLayoutError, ShardRowReader, page_map
from dinofeat.search.index import ImageIndex, IndexCorruptError
from tests.helpers.index import IVF, clustered, finish, python, shard_folder

BUILD = """
from dinofeat.search.index import ImageIndex, IndexOptions
print(ImageIndex.add_shards({index!r}, {shards!r}, options=IndexOptions(exact_limit=200, nprobe=8)))
"""


def test_single_rows_are_read_in_place_from_plain_shards(tmp_path):
    features = shard_folder(tmp_path / "shards", shards=2, rows=700, dim=48)
    files = sorted((tmp_path / "shards").glob("shard-*.parquet"))
    maps = [page_map(file) for file in files]
    assert [m.rows for m in maps] == [700, 700] and len(maps[0].first_rows) >= 1
    rows = np.array([0, 699, 350, 5, 123])
    read = ShardRowReader(files, maps).read(np.array([1, 1, 0, 0, 1]), rows)
    assert np.array_equal(read, features[rows + np.array([700, 700, 0, 0, 700])])
    # Shards compressed (or dictionary-encoded) by other writers cannot be read row by row.
    pq.write_table(pq.read_table(files[0]), tmp_path / "snappy.parquet")
    with pytest.raises(ShardLayoutError, match="stored snappy"):
        page_map(tmp_path / "snappy.parquet")


def test_an_index_of_shards_keeps_no_copy_of_the_vectors(tmp_path):
    features = shard_folder(tmp_path / "shards")
    report = ImageIndex.add_shards(tmp_path / "index", tmp_path / "shards", options=IVF, rank=0, world=1)
    assert (report.added, report.total, report.committed) == (1500, 1500, True)
    index = ImageIndex.open(tmp_path / "index")
    assert index.model == "tiny" and [part.vectors for part in index.manifest.parts] == ["shards"]
    assert not list((tmp_path / "index").glob("part-*.codes"))
    queries = clustered(50, seed=9)
    truth = np.argsort(-(queries @ features.T), axis=1)[:, :10]
    found = [[hit.id for hit in row] for row in index.search(queries, top=10)]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth.tolist(), strict=True)]) >= 0.95
    best = index.search(queries[:1], top=1)[0][0]
    assert best.score == pytest.approx(float(features[best.id] @ queries[0]), abs=1e-5)  # exact
    assert np.allclose(index.vectors([3, 1400]).numpy(), features[[3, 1400]], atol=1e-6)
    # The same folder again adds nothing.
    assert ImageIndex.add_shards(tmp_path / "index", tmp_path / "shards", rank=0, world=1).added == 0


def test_shards_the_index_reads_must_stay_in_place(tmp_path):
    shard_folder(tmp_path / "shards")
    ImageIndex.add_shards(tmp_path / "index", tmp_path / "shards", options=IVF, rank=0, world=1)
    moved = tmp_path / "shards" / "shard-000002.parquet"
    moved.rename(tmp_path / "elsewhere.parquet")
    with pytest.raises(IndexCorruptError, match=r"reads its vectors from shard .*shard-000002\.parquet, "
                                                r"which is missing"):
        ImageIndex.open(tmp_path / "index")


def test_compressed_shards_make_the_index_store_the_vectors(tmp_path, caplog):
    features = shard_folder(tmp_path / "shards")
    for file in (tmp_path / "shards").glob("shard-*.parquet"):
        table = pq.read_table(file)
        pq.write_table(table.replace_schema_metadata(table.schema.metadata), file)  # snappy + dictionary
    with caplog.at_level(logging.WARNING):
        ImageIndex.add_shards(tmp_path / "index", tmp_path / "shards", options=IVF, rank=0, world=1)
    assert "cannot be read row by row" in caplog.text and "stores its own copy" in caplog.text
    index = ImageIndex.open(tmp_path / "index")
    assert [part.vectors for part in index.manifest.parts] == ["stored"]
    assert index.search(features[:1], top=1)[0][0].id == 0


def _list_ids(index: ImageIndex) -> list[list[int]]:
    lists = faiss.extract_index_ivf(index._searcher.ivf).invlists
    return [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).tolist() for i in range(lists.nlist)]


def test_a_two_process_build_equals_the_one_process_build(tmp_path):
    shard_folder(tmp_path / "shards", shards=7)
    code = {name: BUILD.format(index=str(tmp_path / name), shards=str(tmp_path / "shards"))
            for name in ("one", "two")}
    finish(python(code["one"], RANK="0", WORLD_SIZE="1"))
    outputs = [finish(p) for p in [python(code["two"], RANK=str(rank), WORLD_SIZE="2") for rank in (0, 1)]]
    assert sorted("committed=True" in out for out in outputs) == [False, True]  # the last one commits
    one, two = ImageIndex.open(tmp_path / "one"), ImageIndex.open(tmp_path / "two")
    assert len(two) == len(one) == 1750 and len(two.manifest.parts) == 2 and len(two.manifest.lists) == 1
    trained = [(tmp_path / name / "quantizer.faiss").read_bytes() for name in ("one", "two")]
    assert trained[0] == trained[1]  # rank 0 trained on the same sample of the whole folder
    assert _list_ids(two) == _list_ids(one)  # the same rows in the same lists, in the same order
    queries = clustered(40, seed=11)
    assert two.search(queries, top=10) == one.search(queries, top=10)
    assert two.files == one.files
