"""End-to-end: dinofeat-train on a generated folder, export, dinofeat.load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from dinofeat.training.cli import main

import dinofeat
from tests.training.helpers import make_image_folder, train_args


def test_train_export_load(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in lines if "iteration" in r]
    assert len(iters) == 4  # 8 images / batch 4 x 2 epochs
    for key in ("loss", "lr", "wd", "momentum", "teacher_temp", "images_per_s", "data_time"):
        assert all(key in r for r in iters), key
    saved = json.loads((out / "checkpoint.config.json").read_text())
    assert saved["crops"]["global_size"] == 32
    export_dir = tmp_path / "exported"
    assert main(["export", str(out / "checkpoint.pth"), str(export_dir), "--eval", "knn_top1=12.5"]) == 0
    assert "knn_top1" in (export_dir / "README.md").read_text()
    model = dinofeat.load(export_dir, device="cpu")
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_bad_override_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "--data", str(tmp_path), "--set", "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err


def test_print_config_and_presets(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "--preset", "vit_s16_300ep", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["loss"]["teacher_temp"] == 0.07 and cfg["head"]["norm_last_layer"] is False
