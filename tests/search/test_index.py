"""The image index: exact for small collections, compressed above; appends write only what is appended;
version-1 indexes open and convert; damaged files are errors naming them."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from dinofeat.search.index import ImageIndex, IndexCorruptError, IndexMismatchError, IndexOptions, parse_size
from dinofeat.search.index.method import choose_method
from tests.helpers.index import IVF, clustered, paths


def _exact_top(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ database.T), axis=1, kind="stable")[:, :k]


def _ids(hits: list) -> list[list[int]]:
    return [[hit.id for hit in row] for row in hits]


def test_a_small_collection_is_searched_exactly(tmp_path):
    features = clustered(150)
    index, added = ImageIndex.extend(tmp_path / "index", paths(150), torch.from_numpy(features), model="m",
                                     kind="cls")
    assert added == 150 and index.method is not None and index.method.type == "exact"
    hits = index.search(features[:20], top=5)
    assert _ids(hits) == _exact_top(features, features[:20], 5).tolist()
    assert hits[0][0].path == "/data/img/00000.jpg" and hits[0][0].score == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(index.features.numpy(), features, atol=1e-6) and index.files == paths(150)


def test_a_compressed_index_re_ranks_to_near_exact_recall(tmp_path):
    features, queries = clustered(3000), clustered(100, seed=7)
    index, _ = ImageIndex.extend(tmp_path / "index", paths(3000), torch.from_numpy(features), model="m",
                                 kind="cls", options=IVF)
    assert index.method is not None and index.method.type == "ivf" and index.method.factory.startswith("PCAR")
    found, truth = _ids(index.search(queries, top=10)), _exact_top(features, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth.tolist(), strict=True)])
    assert recall >= 0.95
    # Scores are exact cosines (re-ranked with the stored vectors, float16 by default).
    best = index.search(queries[:1], top=1)[0][0]
    assert best.score == pytest.approx(float(features[best.id] @ queries[0]), abs=2e-3)
    # The folder holds no list of paths, and no float copy of the features beyond the refine codes.
    assert "files" not in json.loads((tmp_path / "index" / "manifest.json").read_text())


def test_an_append_writes_only_the_new_rows(tmp_path):
    folder = tmp_path / "index"
    features = clustered(2000)
    ImageIndex.extend(folder, paths(2000), torch.from_numpy(features), model="m", kind="cls", options=IVF)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}
    more = clustered(40, seed=3)
    index, added = ImageIndex.extend(folder, paths(40, "new"), torch.from_numpy(more), model="m", kind="cls")
    assert added == 40 and len(index) == 2040
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}
    untouched = {name for name in before if name != "manifest.json"}
    assert all(after[name] == before[name] for name in untouched)  # not rewritten, not even re-saved
    new = sorted(set(after) - set(before))
    assert len(new) == 4 and sum(after[name][2] for name in new) < 40 * 1000  # 40 rows' codes and paths
    assert [hit.path for hit in index.search(more[:3], top=1)[0]] == ["/data/new/00000.jpg"]
    # Files already indexed are skipped.
    assert ImageIndex.extend(folder, paths(40, "new"), torch.from_numpy(more), model="m", kind="cls")[1] == 0


def test_many_appends_keep_few_lists_files_and_every_row(tmp_path):
    folder = tmp_path / "index"
    ImageIndex.extend(folder, paths(400), torch.from_numpy(clustered(400)), model="m", kind="cls",
                      options=IVF)
    for batch in range(12):
        rows = clustered(25, seed=100 + batch)
        index, _ = ImageIndex.extend(folder, paths(25, f"b{batch}"), torch.from_numpy(rows), model="m",
                                     kind="cls")
        assert index.search(rows[:1], top=1)[0][0].path == f"/data/b{batch}/00000.jpg"
    assert index.manifest is not None and len(index) == 700
    assert len(index.manifest.lists) <= 5  # merged as they grow: O(log n) files, not one per append
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *index.manifest.files()])


def _write_version_1(folder, files, features):
    folder.mkdir()
    save_file({"features": features}, str(folder / "features-3.safetensors"))
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    faiss.write_index(flat, str(folder / "faiss-3.index"))
    (folder / "manifest.json").write_text(json.dumps({
        "format": "dinofeat-index", "version": 1, "model": "m", "kind": "cls", "dim": features.shape[1],
        "count": len(files), "generation": 3, "files": files}))


def test_a_version_1_index_opens_and_converts_on_the_next_write(tmp_path):
    folder, features = tmp_path / "index", clustered(60)
    _write_version_1(folder, paths(60), features)
    old = ImageIndex.open(folder)
    assert len(old) == 60 and old.model == "m"
    assert _ids(old.search(features[:5], top=3)) == _exact_top(features, features[:5], 3).tolist()
    more = clustered(10, seed=5)
    index, added = ImageIndex.extend(folder, paths(10, "new"), torch.from_numpy(more), model="m", kind="cls")
    assert added == 10 and len(index) == 70 and index.files[:60] == paths(60)
    assert np.allclose(index.features.numpy()[:60], features, atol=1e-6)
    assert not list(folder.glob("features-*")) and not list(folder.glob("faiss-*"))
    assert json.loads((folder / "manifest.json").read_text())["version"] == 2


@pytest.mark.parametrize("damage", ["lists data truncated", "lists header garbled", "paths truncated",
                                    "quantizer garbled", "codes missing"])
def test_a_damaged_file_is_one_error_naming_it(tmp_path, damage):
    folder = tmp_path / "index"
    ImageIndex.extend(folder, paths(800), torch.from_numpy(clustered(800)), model="m", kind="cls",
                      options=IVF)
    what, how = damage.rsplit(" ", 1)
    target = next(folder.glob({"lists data": "lists-*.ivfdata", "lists header": "lists-*.ivf",
                               "paths": "part-*.paths.parquet", "quantizer": "quantizer.faiss",
                               "codes": "part-*.codes"}[what]))
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif how == "garbled":
        target.write_bytes(b"\0" * target.stat().st_size)  # same size: found by faiss or the checksum
    else:
        target.unlink()
    with pytest.raises(IndexCorruptError, match=target.name.replace(".", r"\.")):
        ImageIndex.open(folder).verify()


def test_a_flipped_byte_is_found_by_verify(tmp_path):
    folder = tmp_path / "index"
    index, _ = ImageIndex.extend(folder, paths(800), torch.from_numpy(clustered(800)), model="m", kind="cls",
                                 options=IVF)
    index.verify()
    data = next(folder.glob("lists-*.ivfdata"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match=rf"{data.name} does not match its checksum"):
        ImageIndex.open(folder).verify()


def test_mismatches_are_refused(tmp_path):
    folder = tmp_path / "index"
    ImageIndex.extend(folder, paths(20), torch.from_numpy(clustered(20)), model="m", kind="cls")
    with pytest.raises(IndexMismatchError, match="was built with model 'm', but 'other'"):
        ImageIndex.extend(folder, ["/x.jpg"], torch.from_numpy(clustered(1)), model="other", kind="cls")
    with pytest.raises(IndexMismatchError, match="holds 32-d descriptors, these are 16-d"):
        ImageIndex.extend(folder, ["/x.jpg"], torch.from_numpy(clustered(1, dim=16)), model="m", kind="cls")
    with pytest.raises(IndexMismatchError, match=r"query descriptors have shape \(1, 16\)"):
        ImageIndex.open(folder).search(clustered(1, dim=16))


def test_the_method_follows_the_rules():
    assert choose_method(5000, 384, IndexOptions()).type == "exact"
    ten_million = choose_method(10_000_000, 384, IndexOptions())
    assert ten_million.factory == "PCAR128,IVF8192,PQ32" and ten_million.nprobe == 128
    assert choose_method(10_000_000, 384, IndexOptions(memory_budget=parse_size("200M"))).factory == \
        "PCAR48,IVF8192,PQ12"
    assert choose_method(10**8, 384, IndexOptions()).factory.startswith("PCAR128,IVF16384,")
    assert choose_method(5000, 384, IndexOptions(index_type="IVF64,PQ16")).factory == "IVF64,PQ16"
    assert parse_size("1.5G") == 3 * 2**29 and parse_size("512 MB") == 2**29
    with pytest.raises(ValueError, match="memory budget of 10 MiB is too small for 10,000,000 rows"):
        choose_method(10_000_000, 384, IndexOptions(memory_budget=parse_size("10M")))
    with pytest.raises(ValueError, match="index type 'HNSW32' has no inverted lists"):
        choose_method(10**6, 384, IndexOptions(index_type="HNSW32"))
    with pytest.raises(ValueError, match="invalid faiss index type 'IVF12,Bogus'"):
        choose_method(10**6, 384, IndexOptions(index_type="IVF12,Bogus"))
    with pytest.raises(ValueError, match="not a size: 'lots'"):
        parse_size("lots")
