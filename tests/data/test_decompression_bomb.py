"""A huge-dimension image (a decompression bomb) is refused, naming the file, wherever images are read."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.data.files import open_image
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.utils.errors import ImageReadError
from tests.helpers.common import TINY_VIT

BOMB_SIDE = 20_000  # 4e8 pixels: more than twice Pillow's default limit of 89,478,485


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid all-black 1-bit PNG of side x side pixels that is a few tens of kB on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
                     + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 200_000
    return path


def test_open_image_refuses_a_bomb_and_names_it(bomb: Path) -> None:
    with pytest.raises(ImageReadError, match=r"refusing image .*bomb\.png as a possible decompression bomb"):
        open_image(bomb)


def test_between_one_and_two_times_the_limit_is_refused_too(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow only warns in this range; dinofeat refuses instead of decoding.
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: 1.6x the limit
    with pytest.raises(ImageReadError, match=r"big\.png as a possible decompression bomb"):
        open_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    assert open_image(path).size == (40, 40)


def test_library_refuses_a_bomb(bomb: Path) -> None:
    model = dinofeat.load(TINY_VIT, pretrained=False)
    with pytest.raises(ImageReadError, match=r"bomb\.png"):
        model.embed([bomb])


def test_embed_cli_refuses_a_bomb_and_writes_nothing(bomb: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    arch = arch_from_dict(TINY_VIT)
    tiny = save_pretrained(build_backbone(arch), tmp_path / "tiny", HubConfig(arch=arch, name="tiny"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(folder / "fine.png")
    (folder / "bomb.png").write_bytes(bomb.read_bytes())
    out = tmp_path / "feats.safetensors"
    argv = ["embed", str(folder), "-m", str(tiny), "-o", str(out), "--size", "32", "--device", "cpu",
            "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bomb.png as a possible decompression bomb" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_training_data_skips_a_bomb_naming_it(bomb: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from dinofeat.training.data.images import ImageDataset

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    dataset = ImageDataset([bomb, good], transform=lambda image: [], cache_size=8)
    assert dataset.skipped == [str(bomb)] and len(dataset) == 1
    assert "decompression bomb" in caplog.text
