"""`dinofeat retrieval | copydetect | davis | segprobe` through the real main() on tiny stand-in datasets
with the real folder structures and file formats, including their bad-input errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.evaluation.retrieval import RetrievalTransform, revisited_map
from dinofeat.features.image_files import extract_features
from tests.helpers.evaluation import one_thread, save_tiny_model  # noqa: F401 (a fixture)
from tests.helpers.segmentation import make_shapes_split

COMMON = ["--workers", "0", "--no-progress"]
P16_ARCH = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32}


def _cli(command: str, **options: object) -> list[str]:
    """``command --key value ...`` with ``key_name`` spelt ``--key-name``."""
    argv = [command]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _noise_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


# ------------------------------------------------------------------ retrieval
def _revisited(root: Path, db: int = 8, queries: int = 2) -> Path:
    folder = root / "roxford5k"
    imlist = [f"db_{i}" for i in range(db)]
    qimlist = [f"q_{i}" for i in range(queries)]
    for number, stem in enumerate(imlist + qimlist):
        _noise_image(folder / "jpg" / f"{stem}.jpg", number, size=(48 + 4 * number, 40))
    gnd = [
        {"bbx": [0, 0, 10, 10], "easy": [0, 1], "hard": [2], "junk": [3]},
        {"bbx": [0, 0, 10, 10], "easy": [4], "hard": [5, 6], "junk": []},
    ]
    with (folder / "gnd_roxford5k.pkl").open("wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    return root


def test_retrieval_end_to_end_and_cached(tiny_model, tmp_path):
    data, cache, out = _revisited(tmp_path / "data"), tmp_path / "cache", tmp_path / "r.json"
    argv = [
        *_cli(
            "retrieval",
            dataset="roxford5k",
            data=data,
            model=tiny_model,
            imsize="48",
            cache=cache,
            output_json=out,
        ),
        *COMMON,
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    # The same numbers as the Python API on the same images.
    model = dinofeat.load(str(tiny_model), device="cpu")
    jpg = data / "roxford5k" / "jpg"

    def extract(stems):
        return extract_features(
            model,
            [jpg / f"{s}.jpg" for s in stems],
            batch_size=1,
            num_workers=0,
            transform=RetrievalTransform(48),
            progress=False,
        )

    db = extract([f"db_{i}" for i in range(8)])
    queries = extract(["q_0", "q_1"])
    gnd = pickle.loads((data / "roxford5k" / "gnd_roxford5k.pkl").read_bytes())["gnd"]
    expected = revisited_map(db, queries, gnd)
    assert result["mapM"] == pytest.approx(expected["mapM"]) and result["mapH"] == pytest.approx(
        expected["mapH"]
    )
    cached = sorted(cache.glob("*.npy"))
    assert [p.name.split("-")[1] for p in cached] == ["database", "queries"]
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main(argv) == 0  # a re-run reads the cache
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert json.loads(out.read_text())["mapM"] == result["mapM"]
    # Other settings are another cache entry, never a stale hit.
    assert main([*argv, "--multiscale"]) == 0
    assert len(list(cache.glob("*.npy"))) == 4


def test_retrieval_refuses_a_gnd_that_does_not_match_the_database(tiny_model, tmp_path, capsys):
    data = _revisited(tmp_path / "data")
    gnd_file = data / "roxford5k" / "gnd_roxford5k.pkl"
    cfg = pickle.loads(gnd_file.read_bytes())
    cfg["gnd"][1]["hard"] = [5, 70]
    gnd_file.write_bytes(pickle.dumps(cfg))
    out = tmp_path / "r.json"
    out.write_text("previous results")
    argv = [
        *_cli(
            "retrieval",
            dataset="roxford5k",
            data=data,
            model=tiny_model,
            cache=tmp_path / "cache",
            output_json=out,
        ),
        *COMMON,
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "gnd_roxford5k.pkl" in error and "index 70" in error and "8 images" in error
    assert out.read_text() == "previous results"
    assert not (tmp_path / "cache").exists()  # refused before any extraction


# ------------------------------------------------------------------ copy detection
def _copydays(root: Path) -> Path:
    for number, name in enumerate(["200000", "200100", "200200"]):
        _noise_image(root / "original" / f"{name}.jpg", number)
        _noise_image(root / "jpegqual" / "50" / f"{name}.jpg", number)  # an exact copy
        _noise_image(root / "strong" / f"{name[:4]}01.jpg", number)
    for number in range(4):
        _noise_image(root.parent / "distractors" / f"d{number}.jpg", 100 + number)
    for number in range(6):
        _noise_image(root.parent / "whitening" / f"w{number}.jpg", 200 + number)
    return root


def test_copydetect_end_to_end(tiny_model, tmp_path, capsys):
    data = _copydays(tmp_path / "copydays")
    out = tmp_path / "c.json"
    argv = [
        *_cli(
            "copydetect",
            data=data,
            distractors=tmp_path / "distractors",
            whitening=tmp_path / "whitening",
            imsize="32",
            model=tiny_model,
            cache=tmp_path / "cache",
            output_json=out,
        ),
        *COMMON,
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_distractors"] == 4 and result["whitening_images"] == 6
    assert set(result["blocks"]) == {"original", "strong", "jpegqual/50"}
    # Exact copies of the originals rank their original first.
    assert result["blocks"]["jpegqual/50"]["mAP"] == pytest.approx(1.0)
    assert "eval on strong mAP=" in capsys.readouterr().out


# ------------------------------------------------------------------ DAVIS
def _davis(root: Path, frames: int = 4) -> Path:
    video = "squares"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{video}\n")
    rng = np.random.default_rng(0)
    for t in range(frames):
        pixels = rng.integers(0, 60, size=(48, 64, 3), dtype=np.uint8)
        labels = np.zeros((48, 64), dtype=np.uint8)
        pixels[10:26, 8 + 2 * t : 24 + 2 * t] = (230, 30, 30)
        labels[10:26, 8 + 2 * t : 24 + 2 * t] = 1
        pixels[28:44, 36:52] = (30, 230, 30)
        labels[28:44, 36:52] = 2
        frame = root / "JPEGImages" / "480p" / video / f"{t:05d}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(frame, quality=95)
        mask = root / "Annotations" / "480p" / video / f"{t:05d}.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(labels, mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
        image.save(mask)
    return root


def test_davis_end_to_end_writes_label_pngs_and_resumes(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "p16", arch=P16_ARCH)
    data, output, out = _davis(tmp_path / "DAVIS"), tmp_path / "out", tmp_path / "d.json"
    argv = [*_cli("davis", data=data, output=output, model=model, output_json=out), "--no-progress"]
    assert main(argv) == 0
    pngs = sorted((output / "squares").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(4)]
    first = Image.open(pngs[0])
    assert first.mode == "P" and first.size == (64, 48)
    assert np.array_equal(np.array(first), np.array(Image.open(data / "Annotations/480p/squares/00000.png")))
    result = json.loads(out.read_text())
    assert 0 <= result["J&F_mean"] <= 1 and set(result["videos"]["squares"]["per_object"]) == {"1", "2"}
    assert "J&F-Mean" in capsys.readouterr().out
    stamps = [p.stat().st_mtime_ns for p in pngs]
    assert main(argv) == 0  # finished videos are kept as they are
    assert [p.stat().st_mtime_ns for p in pngs] == stamps


def test_davis_missing_annotations_are_named_and_nothing_written_is_lost(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "p16", arch=P16_ARCH)
    data, output = _davis(tmp_path / "DAVIS"), tmp_path / "out"
    (output / "squares").mkdir(parents=True)
    (output / "squares" / "00000.png").write_bytes(b"earlier run")
    (data / "Annotations/480p/squares/00002.png").unlink()
    argv = ["davis", "--data", str(data), "--output", str(output), "--model", str(model), "--no-progress"]
    assert main(argv) == 2
    assert "missing DAVIS annotation" in capsys.readouterr().err
    assert (output / "squares" / "00000.png").read_bytes() == b"earlier run"
    Image.new("P", (32, 24)).save(data / "Annotations/480p/squares/00002.png")
    assert main(argv) == 2
    assert "00002.png is 32x24 but its frame 00002.jpg is 64x48" in capsys.readouterr().err
    (data / "Annotations/480p/squares/00000.png").unlink()
    assert main([*argv, "--no-eval"]) == 2
    assert "00000.png" in capsys.readouterr().err
    assert (output / "squares" / "00000.png").read_bytes() == b"earlier run"


# ------------------------------------------------------------------ segmentation probe
def _segprobe(model: Path, root: Path, **options: object) -> list[str]:
    """``segprobe`` on ``root/train`` and ``root/val`` at 64 px, caching under ``root/cache``."""
    return [*_cli("segprobe", train=root / "train", val=root / "val", image_size="64", model=model,
                  cache=root / "cache", **options), *COMMON]


def test_segprobe_end_to_end(tiny_model, tmp_path):
    make_shapes_split(tmp_path / "train", 12, seed=0)
    make_shapes_split(tmp_path / "val", 4, seed=1, layout="voc")
    out = tmp_path / "s.json"
    argv = _segprobe(tiny_model, tmp_path, num_classes="4", epochs="12", lr="0.02", output_json=out)
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["final"]["mIoU"] > 0.6 and len(result["history"]) == 12


def test_segprobe_label_beyond_the_classes_is_named(tiny_model, tmp_path, capsys):
    make_shapes_split(tmp_path / "train", 2, seed=0)
    make_shapes_split(tmp_path / "val", 2, seed=1)
    assert main(_segprobe(tiny_model, tmp_path, num_classes="3")) == 2
    assert "has label 3, beyond the 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
