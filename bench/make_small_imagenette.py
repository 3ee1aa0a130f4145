"""A downscaled copy of an image folder (Imagenette's train split by default), to carry to a GPU machine.

For a GPU machine that receives only the checkout (64 MiB in all), not ``../shared``. Imagenette's
224-px train split is 114 MB, at 128 px and JPEG quality 80 45 MB. Every image is resized with PIL
(bicubic, antialiased) so that its shorter side is ``--size`` px and written as a JPEG under ``--out``,
keeping the class folders. The default output folder, ``.gpu/``, is ignored by git.

Usage:
    python bench/make_small_imagenette.py [--src ../shared/data/imagenette2/train]
        [--out .gpu/imagenette_train_128] [--size 128] [--quality 80]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from dinofeat.data.files import list_image_files

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE_TRAIN = ROOT.parent / "shared" / "data" / "imagenette2" / "train"


def downscale_folder(src: Path, out: Path, size: int, quality: int) -> dict[str, int]:
    """Write every image of ``src`` (recursively) under ``out`` with its shorter side ``size`` px."""
    files = list_image_files(src)
    written = 0
    for path in files:
        target = (out / path.relative_to(src)).with_suffix(".jpg")
        if target.is_file():  # a rerun completes an interrupted copy
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = size / min(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC)
        partial = target.with_suffix(".part")
        rgb.save(partial, format="JPEG", quality=quality)
        partial.replace(target)
        written += 1
    total_bytes = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    return {"images": len(files), "written": written, "bytes": total_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=IMAGENETTE_TRAIN)
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu" / "imagenette_train_128")
    parser.add_argument("--size", type=int, default=128, help="shorter side in px")
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()
    if not args.src.is_dir():
        raise SystemExit(f"{args.src} is not a folder (Imagenette lives in ../shared/data/imagenette2)")
    print(json.dumps(downscale_folder(args.src, args.out, args.size, args.quality)))


if __name__ == "__main__":
    main()
