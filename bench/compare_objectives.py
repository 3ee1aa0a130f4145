"""Does the DINOv2 objective learn on CPU, and how does it compare with DINO? Two measurements on Imagenette,
each a sequence of the real commands (``dinofeat-train train`` / ``export``, ``dinofeat knn``) run as
subprocesses; a JSON summary at the end (also written to OUT/summary.json).

``compare``: a small ViT from scratch with each objective under the same wall-clock budget. Both objectives'
seconds per iteration are measured first, alternately (PROBE iterations each, twice, on the same data); DINO
trains the ``imagenette_tiny`` preset (12 epochs), DINOv2 the ``dinov2_imagenette_tiny`` preset (the same
network, crops, batch and peak lr) for floor(12 x t_dino / t_dinov2) epochs, its last head layer frozen
throughout as in the DINO preset; both teachers exported, weighted 20-NN on the val split.

``continue``: the bundled ``vit_t16_d4_imagenette``, weighted 20-NN on the val split before; then continued
with the DINOv2 objective from it (fresh heads, the backbone frozen during the first epoch, layer-wise lr
decay 0.9, patch-embedding lr x 0.2, a low lr); 20-NN after. It must not fall.

Usage:
    python bench/compare_objectives.py compare --data ../shared/data/imagenette2 --out runs/compare
    python bench/compare_objectives.py continue --data ../shared/data/imagenette2 --out runs/continue
    python bench/compare_objectives.py compare --data DIR --out OUT --epochs 1 --probe 2   (a check)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAIN = [sys.executable, "-m", "dinofeat.training", "train"]
KNN = [sys.executable, "-c", "import sys; from dinofeat.cli import main; sys.exit(main())", "knn"]


def _sets(settings: list[str]) -> list[str]:
    return [arg for item in settings for arg in ("--set", item)]


def train(preset: str, data: Path, out: Path, settings: list[str]) -> None:
    subprocess.run([*TRAIN, "--preset", preset, "--data", str(data / "train"), "--output-dir", str(out),
                    *_sets(settings)], check=True)


def seconds_per_iteration(preset: str, data: Path, out: Path, iters: int) -> float:
    """Median time of the iterations after the first 2 of a short run of ``preset``."""
    train(preset, data, out, ["run.epochs=1", "optim.warmup_epochs=0", "run.resume=null",
                              "run.saveckp_freq=0", f"run.max_iters_per_epoch={iters + 2}"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([r["iter_time"] for r in records if "iter_time" in r][2:])


def knn20(model: str, data: Path, out: Path) -> dict[str, float]:
    result = out / "knn.json"
    subprocess.run([*KNN, "--model", model, "--train", str(data / "train"), "--val", str(data / "val"),
                    "--k", "20", "-o", str(result)], check=True)
    top: dict[str, float] = json.loads(result.read_text())["results"]["20"]
    return top


def export_and_knn(run: Path, data: Path) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "dinofeat.training", "export", str(run / "checkpoint.pth"),
                    str(run / "exported")], check=True)
    return knn20(str(run / "exported"), data, run)


def compare(data: Path, out: Path, epochs: int, probe: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"imagenette_tiny": [], "dinov2_imagenette_tiny": []}
    for round_ in range(2):
        for preset in times:
            times[preset].append(seconds_per_iteration(preset, data, out / f"probe_{preset}_{round_}", probe))
    t_dino, t_v2 = (statistics.median(v) for v in times.values())
    v2_epochs = max(1, math.floor(epochs * t_dino / t_v2))
    train("imagenette_tiny", data, out / "dino",
          [f"run.epochs={epochs}", f"optim.freeze_last_layer={epochs}",
           f"optim.warmup_epochs={min(1, epochs - 1)}"])
    train("dinov2_imagenette_tiny", data, out / "dinov2",
          [f"run.epochs={v2_epochs}", f"optim.freeze_last_layer={v2_epochs}",
           f"optim.warmup_epochs={min(1, v2_epochs - 1)}"])
    return {"seconds_per_iteration": times, "dino_epochs": epochs, "dinov2_epochs": v2_epochs,
            "dino_20nn": export_and_knn(out / "dino", data),
            "dinov2_20nn": export_and_knn(out / "dinov2", data)}


def continue_bundled(data: Path, out: Path, epochs: int) -> dict[str, Any]:
    before = knn20("vit_t16_d4_imagenette", data, out)
    settings = ["model.init=vit_t16_d4_imagenette", f"run.epochs={epochs}",
                f"optim.freeze_last_layer={epochs}", "objective.freeze_backbone_epochs=1",
                "optim.warmup_epochs=1", "optim.lr=0.00035"]
    train("dinov2_imagenette_tiny", data, out / "run", settings)
    return {"settings": settings, "before_20nn": before, "after_20nn": export_and_knn(out / "run", data)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("compare", "continue"))
    parser.add_argument("--data", type=Path, required=True,
                        help="a folder with train/ and val/ class folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None,
                        help="DINO's epochs (compare, default 12) or the continued run's "
                             "(continue, default 4)")
    parser.add_argument("--probe", type=int, default=20, help="iterations timed per probe run (compare)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "compare":
        summary = compare(args.data, args.out, args.epochs or 12, args.probe)
    else:
        summary = continue_bundled(args.data, args.out, args.epochs or 4)
    text = json.dumps(summary, indent=2)
    (args.out / "summary.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
