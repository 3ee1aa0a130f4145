"""End-to-end: dinofeat-train on a generated folder, export, dinofeat.load."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import dinofeat
from dinofeat.training.cli import main
from tests.helpers.training import make_image_folder, train_args


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


def test_export_of_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "checkpoint.pth").write_bytes(b"garbage")
    assert main(["export", str(tmp_path / "checkpoint.pth"), str(tmp_path / "out")]) == 2
    assert "checkpoint.pth is not a torch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_print_config_and_presets(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "--preset", "vit_s16_300ep", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["loss"]["teacher_temp"] == 0.07 and cfg["head"]["norm_last_layer"] is False


def test_knn_monitor_and_half_precision_export(tmp_path: Path) -> None:
    from safetensors import safe_open

    data = make_image_folder(tmp_path / "images", n=24)
    out = tmp_path / "run"
    extra = ["run.epochs=1", "run.eval_every=1", f"run.eval_train={data}", f"run.eval_val={data}"]
    assert main(train_args(data, out, *extra)) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["knn20_top1"] <= 100.0
    assert evals[0]["knn20_top5"] >= evals[0]["knn20_top1"]

    export_dir = tmp_path / "exported"
    assert main(["export", str(out / "checkpoint.pth"), str(export_dir), "--half"]) == 0
    with safe_open(str(export_dir / "model.safetensors"), "pt") as weights:
        assert all(weights.get_tensor(key).dtype == torch.float16 for key in weights.keys())  # noqa: SIM118
    model = dinofeat.load(export_dir, device="cpu")
    assert model.dtype == torch.float32
    assert model.embed(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_eval_every_without_folders_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_image_folder(tmp_path / "images")
    assert main(train_args(data, tmp_path / "run", "run.eval_every=1")) == 2
    assert "run.eval_train" in capsys.readouterr().err


def test_setup_and_input_errors_are_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_image_folder(tmp_path / "images")
    listing = tmp_path / "nolist.txt"
    no_list = train_args(data, tmp_path / "run", f"data.file_list={listing}")
    no_list.remove("--data")
    no_list.remove(str(data))
    cases = [(no_list, f"file list {listing} does not exist"),
             (train_args(data, tmp_path / "run", "crops.local_crops_number=-1"),
              "crops.local_crops_number must be >= 0")]
    (tmp_path / "a_file").write_text("")
    cases.append((train_args(data, tmp_path / "a_file"), "a_file exists and is not a folder"))
    # A wrong k-NN monitor folder is refused before training, not after the first epoch.
    cases.append((train_args(data, tmp_path / "run", "run.eval_every=1", f"run.eval_train={tmp_path / 'no'}",
                             f"run.eval_val={data}"), "dataset folder not found"))
    if not torch.cuda.is_available():
        cases.append((train_args(data, tmp_path / "run", "run.device=cuda"),
                      "asks for CUDA but no CUDA device is available"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # no case trained or wrote anything


def test_failed_hub_upload_keeps_the_export(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # no test touches the network
    out = tmp_path / "run"
    data = make_image_folder(tmp_path / "images")
    assert main(train_args(data, out, "run.epochs=1", "optim.warmup_epochs=0")) == 0
    export_dir = tmp_path / "exported"
    push = ["--push-to-hub", "someone/model"]
    assert main(["export", str(out / "checkpoint.pth"), str(export_dir), *push]) == 2
    err = capsys.readouterr().err
    assert f"exported to {export_dir}, but uploading it to the Hub repository someone/model failed" in err
    assert "offline mode" in err and "Traceback" not in err
    assert dinofeat.load(export_dir, device="cpu").embed(torch.randn(1, 3, 32, 32)).shape == (1, 32)
