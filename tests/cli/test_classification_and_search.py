"""End to end on imagenette2 with tiny random models: `dinofeat knn`, index -> search, dedup, bad inputs."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.data.files import scan_image_folder
from dinofeat.evaluation.knn import knn_classify
from dinofeat.search.index import ImageIndex, IndexCorruptError, IndexMismatchError
from tests.helpers.common import shared_path
from tests.helpers.evaluation import save_tiny_model

# Random weights are not DINO: for search they act as a random-projection pixel descriptor, far less
# robust than trained DINO features. A 1-block p16/192-d random ViT at 224 px with CLS ⊕ GeM ranks
# every copy below (5 % crop, resize, JPEG q70) first; with 10 % crops a random ViT reaches only
# 70-90 % rank-1 (measured), so the test uses the milder crop.
SEARCH_ARCH = {"patch_size": 16, "embed_dim": 192, "depth": 1, "num_heads": 3, "img_size": 224}
SEARCH_SIZE = {"resize": 224, "crop": 224}
COMMON = ["--workers", "0", "--no-progress", "--batch-size", "32"]


def _subset(source: Path, target: Path, per_class: int) -> Path:
    for class_dir in sorted(source.iterdir()):
        (target / class_dir.name).mkdir(parents=True)
        for file in sorted(class_dir.iterdir())[:per_class]:
            (target / class_dir.name / file.name).symlink_to(file)
    return target


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    root = shared_path("data", "imagenette2")
    base = tmp_path_factory.mktemp("imagenette")
    return _subset(root / "train", base / "train", 20), _subset(root / "val", base / "val", 10)


def test_knn_end_to_end(imagenette, tmp_path):
    train, val = imagenette
    model = save_tiny_model(tmp_path / "model")
    out, cache = tmp_path / "knn.json", tmp_path / "cache"
    argv = [
        "knn",
        "--model",
        str(model),
        "--train",
        str(train),
        "--val",
        str(val),
        "--k",
        "1",
        "10",
        "20",
        *COMMON,
    ]
    assert main([*argv, "--save-features", str(cache), "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["num_train"], result["num_val"], result["feature_dim"]) == (200, 100, 32)
    assert set(result["results"]) == {"1", "10", "20"}
    extractor = dinofeat.load(model, device="cpu")
    train_files, val_files = scan_image_folder(train), scan_image_folder(val)
    expected = knn_classify(
        extractor.embed(train_files.files),
        torch.tensor(train_files.labels),
        extractor.embed(val_files.files),
        torch.tensor(val_files.labels),
        ks=(1, 10, 20),
    )
    assert result["results"] == {str(k): v for k, v in expected.items()}
    assert (
        main(["knn", "--load-features", str(cache), "--k", "1", "10", "20", "-o", str(tmp_path / "b.json")])
        == 0
    )
    assert json.loads((tmp_path / "b.json").read_text())["results"] == result["results"]


def _augmented_copy(source: Path, target: Path, rng: random.Random) -> None:
    image = Image.open(source).convert("RGB")
    w, h = image.size
    left, top = rng.randint(0, w // 20), rng.randint(0, h // 20)
    crop = image.crop((left, top, left + int(0.95 * w), top + int(0.95 * h))).resize(
        (180, 180), Image.BICUBIC
    )
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=70)
    target.write_bytes(buffer.getvalue())


def test_index_search_finds_augmented_copy(imagenette, tmp_path, capsys):
    _, val = imagenette
    model = save_tiny_model(tmp_path / "model", SEARCH_ARCH, **SEARCH_SIZE)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    originals = [f for c in sorted(val.iterdir()) for f in sorted(c.iterdir())[:3]]
    for f in originals[:20]:
        (gallery / f.name).symlink_to(f.resolve())
    index_dir = tmp_path / "index"
    assert main(["index", str(gallery), "-o", str(index_dir), "--model", str(model), "--gem", *COMMON]) == 0
    first = ImageIndex.open(index_dir)
    for f in originals[20:]:  # incremental: the old descriptors must be kept, not recomputed
        (gallery / f.name).symlink_to(f.resolve())
    assert main(["index", str(gallery), "-o", str(index_dir), "--model", str(model), "--gem", *COMMON]) == 0
    assert "added 10 images, 30 in total" in capsys.readouterr().out
    second = ImageIndex.open(index_dir)
    assert torch.equal(second.features[:20], first.features) and second.files[:20] == first.files
    queries = tmp_path / "queries"
    queries.mkdir()
    rng = random.Random(0)
    for f in originals:
        _augmented_copy(f, queries / f"{f.stem}.jpg", rng)
    out = tmp_path / "hits.json"
    argv = [
        "search",
        str(index_dir),
        str(queries),
        "--top",
        "3",
        "--json",
        str(out),
        "--sheet",
        str(tmp_path / "sheet.png"),
    ]
    assert main([*argv, *COMMON]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 30
    for entry in results:
        assert Path(entry["results"][0]["path"]).stem == Path(entry["query"]).stem, entry
    assert Image.open(tmp_path / "sheet.png").size == (4 * 128, 30 * 144)


def test_dedup_groups_copies(tmp_path, photos, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:3]
    for f in files:
        shutil.copy(f, folder / f.name)
    Image.open(files[0]).convert("RGB").save(folder / "copy_of_first.jpg", quality=90)
    model = save_tiny_model(tmp_path / "model", SEARCH_ARCH, **SEARCH_SIZE)
    out = tmp_path / "dups.json"
    assert (
        main(
            [
                "dedup",
                str(folder),
                "--threshold",
                "0.98",
                "--model",
                str(model),
                "--gem",
                "--json",
                str(out),
                *COMMON,
            ]
        )
        == 0
    )
    groups = json.loads(out.read_text())["groups"]
    assert [sorted(Path(p).name for p in g) for g in groups] == [sorted([files[0].name, "copy_of_first.jpg"])]


def _model_and_gallery(tmp_path: Path, folder_name: str = "photos") -> tuple[Path, Path]:
    """A tiny random model and a folder of three small plain-colour images."""
    model = save_tiny_model(tmp_path / "model")
    folder = tmp_path / folder_name
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 10, 200)).save(folder / f"{i}.png")
    return model, folder


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    model, gallery = _model_and_gallery(tmp_path, "g/c")
    other = save_tiny_model(tmp_path / "other", name="other")
    index_dir = tmp_path / "index"
    assert main(["index", str(gallery), "-o", str(index_dir), "--model", str(model), *COMMON]) == 0
    no_model = tmp_path / "no_model"
    cases = [
        (["search", str(index_dir), str(gallery / "0.png"), "--model", str(other)], "was built with model"),
        (["index", str(gallery), "-o", str(index_dir), "--model", str(other)], "was built with model"),
        (
            ["index", str(gallery), "-o", str(index_dir), "--model", str(model), "--gem"],
            "was built with kind",
        ),
        (["search", str(tmp_path / "nowhere"), str(gallery / "0.png")], "no dinofeat index"),
        (["search", str(index_dir), str(tmp_path / "missing.png")], "query image not found"),
        (
            ["index", str(tmp_path / "empty_dir"), "-o", str(tmp_path / "i2"), "--model", str(model)],
            "no image files",
        ),
        (
            [
                "knn",
                "--model",
                str(model),
                "--train",
                str(tmp_path / "nope"),
                "--val",
                str(tmp_path),
                "-o",
                "x.json",
            ],
            "--train folder not found",
        ),
        (["knn", "--train", str(tmp_path), "-o", "x.json"], "--val required unless --load-features"),
        # Settings that cannot work are refused before the model is even loaded (it does not exist here).
        (["knn", "--model", str(no_model), "--train", str(tmp_path / "g"), "--val", str(tmp_path / "g"),
          "-o", "x.json"], "every k must be between 1 and the number of train samples 3, got [10, 20"),
        (["knn", "--model", str(no_model), "--train", str(tmp_path / "g"), "--val", str(tmp_path / "g"),
          "--k", "1", "--temperature", "0", "-o", "x.json"], "temperature must be positive"),
        (["linear", "--model", str(no_model), "--train", str(tmp_path / "g"), "--val", str(tmp_path / "g"),
          "--epochs", "0", "-o", "x.json"], "epochs, batch_size and base_lr must be positive"),
        (["dedup", str(gallery), "--threshold", "1.5", "--model", str(no_model)], "cosine similarity in (-1"),
        (["search", str(tmp_path / "nowhere"), str(gallery / "0.png"), "--top", "0"], "--top must be >= 1"),
    ]
    (tmp_path / "empty_dir").mkdir()
    for argv, message in cases:
        assert main([*argv, *COMMON]) == 2, argv
        assert message in capsys.readouterr().err, argv
    index = ImageIndex.open(index_dir)
    with pytest.raises(IndexMismatchError, match=r"shape \(1, 32\)"):
        index.add(["/x.png"], torch.zeros(1, 16))
    with pytest.raises(IndexMismatchError, match="query descriptors"):
        index.search(torch.zeros(1, 16))
    manifest = json.loads((index_dir / "manifest.json").read_text())
    (index_dir / "manifest.json").write_text(json.dumps({**manifest, "count": 4}))
    with pytest.raises(IndexMismatchError, match="inconsistent"):
        ImageIndex.open(index_dir)


def test_linear_cli_on_tiny_folder(tmp_path):
    from tests.helpers.evaluation import make_image_folder

    model = save_tiny_model(tmp_path / "model")
    train = make_image_folder(tmp_path / "train", classes=3, per_class=4, seed=1)
    val = make_image_folder(tmp_path / "val", classes=3, per_class=2, seed=1)
    out = tmp_path / "linear.json"
    argv = [
        "linear",
        "--model",
        str(model),
        "--train",
        str(train),
        "--val",
        str(val),
        "--n-last-blocks",
        "2",
        "--avgpool",
        "--epochs",
        "3",
        "--probe-batch-size",
        "4",
        "-o",
        str(out),
        *COMMON,
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["feature_dim"], result["features"], result["last"]["epoch"]) == (
        96,
        "linear-last2+avgpool",
        3,
    )
    assert 0.0 <= result["best"]["top1"] <= 100.0 and len(result["history"]) == 3


def test_index_and_dedup_skip_unreadable_images(tmp_path, capsys):
    model, folder = _model_and_gallery(tmp_path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    index_dir = tmp_path / "index"
    argv = ["index", str(folder), "-o", str(index_dir), "--model", str(model), *COMMON]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--skip-unreadable" in err
    assert not (index_dir / "manifest.json").exists()  # nothing half-written
    assert main([*argv, "--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image(s)" in captured.err and "added 3 images, 3 in total" in captured.out
    assert sorted(Path(f).name for f in ImageIndex.open(index_dir).files) == ["0.png", "1.png", "2.png"]
    # Extending later retries the unreadable file, skips it again, and keeps the index as it was.
    assert main([*argv, "--skip-unreadable"]) == 0
    assert "added 0 images, 3 in total" in capsys.readouterr().out
    assert len(ImageIndex.open(index_dir)) == 3
    dedup = ["dedup", str(folder), "--threshold", "0.999", "--model", str(model), *COMMON]
    assert main(dedup) == 2 and "broken.jpg" in capsys.readouterr().err
    assert main([*dedup, "--skip-unreadable"]) == 0
    assert "among 3 images" in capsys.readouterr().out


def test_damaged_index_parts(tmp_path, capsys):
    model, gallery = _model_and_gallery(tmp_path)
    index_dir = tmp_path / "index"
    assert main(["index", str(gallery), "-o", str(index_dir), "--model", str(model), *COMMON]) == 0
    queries = ImageIndex.open(index_dir).features[:2]
    assert [h.path for h in ImageIndex.open(index_dir).search(queries, top=1)[0]] == [str(gallery / "0.png")]
    # A truncated part is one error naming the file, at open, and `dinofeat search` prints it.
    codes = next(index_dir.glob("part-*.codes"))
    codes.write_bytes(codes.read_bytes()[:60])
    with pytest.raises(IndexCorruptError, match=rf"{codes.name} has 60 bytes, the manifest says \d+"):
        ImageIndex.open(index_dir)
    capsys.readouterr()
    assert main(["search", str(index_dir), str(gallery / "0.png"), *COMMON]) == 2
    assert f"{codes.name} has 60 bytes" in capsys.readouterr().err
    (index_dir / "manifest.json").write_text("{")
    with pytest.raises(IndexMismatchError, match=r"manifest\.json is not valid JSON"):
        ImageIndex.open(index_dir)
