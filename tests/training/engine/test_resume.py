"""Resume equals the uninterrupted run; an interrupted checkpoint write never replaces the last good one;
official full checkpoints load with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine import checkpoint as checkpoint_module
from dinofeat.training.engine.checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder


def _config(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}", f"run.output_dir={out}",
                                     "model.drop_path_rate=0.1", *extra])


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"s.{k}": v for k, v in trainer.student_module.state_dict().items()}
    state.update({f"t.{k}": v for k, v in trainer.teacher.state_dict().items()})
    state["center"] = trainer.step.loss_fn.center
    return state


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")
    full = Trainer(_config(data, tmp_path / "full"))
    full.fit()
    interrupted = Trainer(_config(data, tmp_path / "part"))
    interrupted.train_one_epoch(0)
    interrupted.save_checkpoint(1)
    torch.manual_seed(1234)  # a crash and restart would not keep the RNG state
    resumed = Trainer(_config(data, tmp_path / "part"))
    assert resumed.start_epoch == 1
    resumed.fit()
    expected, got = _weights(full), _weights(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    resumed_state, full_state = resumed.step.optimizer.state_dict(), full.step.optimizer.state_dict()
    assert resumed_state["state"].keys() == full_state["state"].keys()


def test_interrupted_write_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / CHECKPOINT_NAME
    atomic_save({"epoch": 1, "w": torch.ones(3)}, target)

    def failing_save(obj: object, handle: object) -> None:
        handle.write(b"partial bytes")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    kept = load_checkpoint(target)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temp file left behind


def test_official_full_checkpoint_resumes(golden: Path, tmp_path: Path) -> None:
    path = golden / "dino_full_checkpoint_p16.pth"
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        torch.load(path, weights_only=True)
    data = make_image_folder(tmp_path / "images")
    cfg = _config(data, tmp_path / "run", 'model.arch={"patch_size": 16, "embed_dim": 192, "depth": 4, '
                  '"num_heads": 3}', "head.out_dim=256", "head.hidden_dim=128", "head.bottleneck_dim=64",
                  f"run.resume={path}", "crops.global_size=32")
    trainer = Trainer(cfg)
    ckpt = load_checkpoint(path)
    assert trainer.start_epoch == 1
    assert torch.equal(trainer.step.loss_fn.center, ckpt["dino_loss"]["center"])
    assert torch.equal(trainer.teacher.backbone.pos_embed, ckpt["teacher"]["backbone.pos_embed"])
    assert torch.equal(trainer.student_module.head.last_layer.parametrizations.weight.original1,
                       ckpt["student"]["module.head.last_layer.weight_v"])
    trainer.fit()  # continues training from epoch 1


def test_resume_with_another_network_is_refused_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")
    first = Trainer(_config(data, tmp_path / "run", "run.epochs=1"))
    first.fit()
    saved = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ValueError, match=r"head\.out_dim: 64 there, 128 now.*run\.resume=null"):
        Trainer(_config(data, tmp_path / "run", "run.epochs=2", "head.out_dim=128"))
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == saved
    resumed = Trainer(_config(data, tmp_path / "run", "run.epochs=2", "model.drop_path_rate=0.0"))
    assert resumed.start_epoch == 1  # drop-path is a training setting, not part of the network


def test_resume_weights_that_do_not_fit_name_the_key(tmp_path: Path) -> None:
    from dinofeat.utils.errors import WeightsMismatchError

    data = make_image_folder(tmp_path / "images")
    trainer = Trainer(_config(data, tmp_path / "run", "run.epochs=1"))
    state = trainer.state_dict(1)
    state["teacher"] = {**state["teacher"], "backbone.cls_token": torch.zeros(1, 1, 7)}
    with pytest.raises(WeightsMismatchError, match=r"backbone\.cls_token: file \(1, 1, 7\)"):
        trainer.load_state(state, origin="edited.pth")
