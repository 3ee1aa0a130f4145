"""Video decode / encode (dinofeat.data.video) and the video forms of `dinofeat attention | embed`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dinofeat.cli import main
from dinofeat.data.preprocess import pil_geometry, to_normalized_tensor
from dinofeat.data.video import VideoFrame, iter_frames, video_info
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.stores.arrays import load_features, load_timestamps, save_features
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.hub.loading import load
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.utils.errors import SetupError, VideoReadError
from dinofeat.viz.video_writer import VideoWriter, output_codec
from dinofeat.viz.videos import heat_map
from tests.helpers.common import TINY_VIT
from tests.helpers.video import moving_shapes, write_clip, write_faststart_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "shapes.mp4")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch = arch_from_dict(TINY_VIT)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_pretrained(build_backbone(arch), folder, HubConfig(arch=arch, name="tiny"))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _network_batch(model: FeatureExtractor, frames: list[VideoFrame]) -> torch.Tensor:
    """The frames as the video commands feed them to the network (64 x 64: already whole patches)."""
    return torch.stack([to_normalized_tensor(f.image, model.preprocess) for f in frames])


def _pixels(maps: torch.Tensor, row_axis: int) -> np.ndarray:
    """Patch values -> 8 x 8 pixel blocks (rows at ``row_axis``, columns next), as numpy."""
    return maps.repeat_interleave(8, row_axis).repeat_interleave(8, row_axis + 1).numpy()


# ------------------------------------------------------------------ decode / encode
def test_frames_and_timestamps(clip: Path) -> None:
    frames = list(iter_frames(clip))
    assert [f.index for f in frames] == list(range(12))
    assert np.allclose([f.time for f in frames], np.arange(12) / 24)
    assert frames[0].image.size == (64, 64) and frames[0].image.mode == "RGB"
    # Lossy, but the moving square is where it was drawn.
    assert np.abs(np.asarray(frames[5].image, np.int16) - moving_shapes(5)).mean() < 8
    kept = list(iter_frames(clip, every=5, size=(32, 48)))
    assert [f.index for f in kept] == [0, 5, 10]
    assert np.allclose([f.time for f in kept], [0, 5 / 24, 10 / 24])
    assert kept[0].image.size == (48, 32)
    assert next(iter_frames(clip, size=40)).image.size == (40, 40)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        next(iter_frames(clip, every=0))


def test_writer_output_reopens_with_its_frames_and_size(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=10) as writer:
        for index in range(7):
            writer.write(moving_shapes(index, 48, 81))  # odd width: the last column is dropped
    info = video_info(out)
    assert (info.frames, info.width, info.height, info.fps) == (7, 80, 48, 10)
    assert info.codec == {"libx264": "h264", "mpeg4": "mpeg4"}[output_codec()]
    assert len(list(iter_frames(out))) == 7
    assert not _leftovers(tmp_path)


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match="frame 1 is 32x32, the video 64x64"):  # noqa: SIM117
        with VideoWriter(out, fps=5) as writer:
            writer.write(moving_shapes(0))
            writer.write(moving_shapes(1, 32, 32))
    assert out.read_bytes() == b"previous" and not _leftovers(tmp_path)
    with pytest.raises(ValueError, match="no frames to write"), VideoWriter(out, fps=5):
        pass
    assert out.read_bytes() == b"previous" and not _leftovers(tmp_path)
    with pytest.raises(ValueError, match=r"must end in \.mp4, \.mkv, \.mov"):
        VideoWriter(tmp_path / "out.gif", fps=5)


def test_truncated_corrupt_and_unknown_videos_are_named(clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"  # the index (moov) is at the end: gone
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=r"cannot read video .*cut\.mp4"):
        list(iter_frames(cut))
    fast = write_faststart_clip(tmp_path / "fast.mp4")
    fast_data = fast.read_bytes()
    cut_fast = tmp_path / "cut_fast.mp4"  # the index survives, the frames do not
    cut_fast.write_bytes(fast_data[: len(fast_data) * 2 // 3])
    with pytest.raises(VideoReadError, match=r"cut_fast\.mp4 is (corrupt or )?truncated"):
        list(iter_frames(cut_fast))
    garbled = bytearray(fast_data)
    garbled[len(garbled) // 2: len(garbled) // 2 + 2000] = np.random.default_rng(0).bytes(2000)
    (tmp_path / "garbled.mp4").write_bytes(bytes(garbled))
    with pytest.raises(VideoReadError, match=r"garbled\.mp4 is corrupt or truncated"):
        list(iter_frames(tmp_path / "garbled.mp4"))
    (tmp_path / "notes.mkv").write_text("not a video\n" * 20)
    with pytest.raises(VideoReadError, match=r"notes\.mkv: not a video container FFmpeg knows"):
        video_info(tmp_path / "notes.mkv")
    with pytest.raises(FileNotFoundError, match=r"video file not found: .*missing\.mp4"):
        next(iter_frames(tmp_path / "missing.mp4"))


# ------------------------------------------------------------------ dinofeat attention CLIP
def test_attention_video_cli(clip: Path, tiny: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attn.mp4"
    argv = ["attention", str(clip), "-m", str(tiny), "-o", str(out), "--every", "2", "--fps", "6",
            "--device", "cpu"]
    assert main(argv) == 0
    assert "wrote 6 frames of mean attention" in capsys.readouterr().err
    info = video_info(out)
    assert (info.frames, info.width, info.height, info.fps) == (6, 64, 64, 6)
    # Frame 2 of the clip is the second output frame: its heat map, up to the codec's loss.
    model = load(tiny, device="cpu")
    batch = _network_batch(model, [f for f in iter_frames(clip) if f.index in (2, 4)])
    expected = [heat_map(_pixels(m, 0)) for m in model.cls_attention(batch).mean(dim=1)]
    written = np.asarray(list(iter_frames(out))[1].image, np.int16)
    assert np.abs(written - expected[0]).mean() < 6 < np.abs(written - expected[1]).mean()
    # --mask: the frame itself, dimmed outside the mask; --size S resizes the shorter side.
    assert main([*argv, "--mask", "--size", "32"]) == 0
    assert "6 frames of 60% attention masks" in capsys.readouterr().err
    assert (video_info(out).width, video_info(out).height) == (32, 32)
    assert not _leftovers(tmp_path)


def test_attention_video_errors_write_nothing(clip: Path, tiny: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attn.mp4"
    out.write_bytes(b"previous")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:300])
    assert main(["attention", str(broken), "-m", str(tiny), "-o", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "Traceback" not in err
    assert out.read_bytes() == b"previous" and not _leftovers(tmp_path)
    # Refused before the (missing) model is loaded.
    for argv, message in [
        ([str(clip), "-o", str(tmp_path / "a.avi")], "video output must end in .mp4, .mkv, .mov"),
        ([str(clip), str(clip), "-o", str(out)], "a video is processed alone, got 2 inputs"),
        ([str(clip), "-o", str(out), "--every", "0"], "--every must be >= 1, got 0"),
        ([str(tmp_path / "none.mp4"), "-o", str(out)], "video file not found"),
    ]:
        assert main(["attention", *argv, "-m", str(tmp_path / "no_model")]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------ dinofeat embed CLIP
def test_embed_video_rows_and_timestamps(clip: Path, tiny: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "frames.safetensors"
    argv = ["embed", str(clip), "-m", str(tiny), "-o", str(out), "--every", "3", "--size", "32",
            "--device", "cpu"]
    assert main(argv) == 0
    assert "wrote (4, 32) features of 4 frames" in capsys.readouterr().err
    features, files = load_features(out)
    assert features.shape == (4, 32) and files == [str(clip)] * 4
    stamps = load_timestamps(out)
    assert stamps is not None
    times, indices = stamps
    assert indices.tolist() == [0, 3, 6, 9] and np.allclose(times.numpy(), [0, 3 / 24, 6 / 24, 9 / 24])
    model = load(tiny, device="cpu")
    geometry = pil_geometry(model.preprocess, 32)
    frames = [f.image for f in iter_frames(clip, every=3)]
    expected = model.embed(torch.stack([to_normalized_tensor(geometry(f), model.preprocess) for f in frames]))
    assert torch.allclose(features, expected, atol=1e-6)
    assert main(["embed", str(clip), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "f.npy")]) == 2
    assert "write a .safetensors file" in capsys.readouterr().err


def test_timestamps_in_feature_files(tmp_path: Path) -> None:
    images = save_features(tmp_path / "images.safetensors", torch.zeros(2, 4), ["a.png", "b.png"])
    assert load_timestamps(images) is None
    with pytest.raises(ValueError, match=r"timestamps are stored in \.safetensors"):
        save_features(tmp_path / "f.npy", torch.zeros(2, 4), ["v", "v"], timestamps=torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected \(2,\) timestamps for 2 rows, got \(3,\)"):
        save_features(tmp_path / "f.safetensors", torch.zeros(2, 4), ["v", "v"], timestamps=torch.zeros(3))
    assert not os.path.exists(tmp_path / "f.safetensors")


# ------------------------------------------------------------------ dinofeat pca CLIP
def test_pca_video_cli_fits_once_on_the_first_frames(tiny: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dinofeat.dense.pca import fit_pca

    # A scene change half-way: a PCA fitted on the last frames would colour the clip differently.
    clip = tmp_path / "cut.mp4"
    with VideoWriter(clip, fps=24) as writer:
        for index in range(12):
            frame = moving_shapes(index)
            writer.write(frame if index < 6 else np.ascontiguousarray(255 - frame[::-1]))
    out = tmp_path / "pca.mp4"
    argv = ["pca", str(clip), "-m", str(tiny), "-o", str(out), "--fit-frames", "4", "--batch-size", "3",
            "--size", "64", "--device", "cpu"]
    assert main(argv) == 0
    assert "wrote 12 frames of PCA (fitted on the first 4" in capsys.readouterr().err
    info = video_info(out)
    assert (info.frames, info.width, info.height, info.fps) == (12, 128, 64, 24)
    # The right half of every frame is the projection fitted on frames 0-3, up to the codec's loss.
    model = load(tiny, device="cpu")
    frames = list(iter_frames(clip))
    tokens = model.patch_tokens(_network_batch(model, frames))
    expected = (_pixels(fit_pca(tokens[:4]).to_rgb(tokens), 1) * 255).round()
    written = np.stack([np.asarray(f.image, np.int16) for f in iter_frames(out)])
    assert np.abs(written[:, :, :64] - np.stack([np.asarray(f.image) for f in frames])).mean() < 8
    error = np.abs(written[:, :, 64:] - expected).mean()
    refitted = (_pixels(fit_pca(tokens[8:]).to_rgb(tokens), 1) * 255).round()
    assert error < 6 and np.abs(written[:, :, 64:] - refitted).mean() > 3 * error


def test_pca_video_errors_write_nothing(clip: Path, tiny: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pca.mp4"
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))  # a Matroska magic number, then nothing
    assert main(["pca", str(broken), "-m", str(tiny), "-o", str(out), "--device", "cpu"]) == 2
    assert "broken.mkv" in capsys.readouterr().err
    assert not out.exists() and not _leftovers(tmp_path)
    assert main(["pca", str(clip), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "p.png")]) == 2
    assert "video output must end in .mp4" in capsys.readouterr().err


def test_without_pyav_images_work_and_video_says_what_to_install(clip: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['av'] = None; from dinofeat.cli import main; "
            "raise SystemExit(main(['models']))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(SetupError, match=r"video needs av, from the \[video\] extra: "
                                         r"pip install 'dinofeat\[video\]'"):
        video_info(clip)


def test_a_cnn_is_refused_before_anything_is_written(clip: Path, tmp_path: Path) -> None:
    from dinofeat.viz.videos import attention_video, pca_video

    resnet = load({"family": "resnet"}, pretrained=False, device="cpu")
    for make in (attention_video, pca_video):
        with pytest.raises(TypeError, match="is a CNN: attention and PCA videos need a ViT"):
            make(resnet, clip, tmp_path / "out.mp4")
    assert not list(tmp_path.iterdir())
