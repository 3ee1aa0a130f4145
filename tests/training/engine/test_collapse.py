"""Collapse guard: the statistics on hand-made distributions, the detector's windows, and both failure
modes provoked in tiny real training runs (while a healthy run stays quiet)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.collapse import (
    CollapseDetector,
    collapse_stats,
    effective_dimensions,
    kl_divergence,
    row_entropy,
    top_dimension_mass,
)
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder


def test_statistics_on_hand_made_distributions() -> None:
    uniform = torch.full((3, 8), 1 / 8)
    one_hot_same = torch.zeros(3, 8)
    one_hot_same[:, 2] = 1
    assert row_entropy(uniform).item() == pytest.approx(math.log(8))
    assert row_entropy(one_hot_same).item() == pytest.approx(0.0, abs=1e-6)
    assert effective_dimensions(uniform).item() == pytest.approx(8)
    assert effective_dimensions(one_hot_same).item() == pytest.approx(1)
    assert effective_dimensions(torch.eye(8)[:4]).item() == pytest.approx(4)  # 4 rows, 4 distinct dims
    assert top_dimension_mass(one_hot_same).item() == 1.0
    assert top_dimension_mass(uniform).item() == pytest.approx(1 / 8)
    p, q = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_divergence(p, q.log()).item() == pytest.approx(expected)
    assert kl_divergence(p, p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_collapse_stats_applies_centre_and_temperatures() -> None:
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    centre = torch.tensor([[2.0, 0.0]])  # centring removes the common offset: uniform teacher
    stats = collapse_stats(teacher, torch.zeros(6, 2), centre, teacher_temp=0.1, student_temp=0.1)
    assert stats["teacher_entropy"] == pytest.approx(math.log(2))
    assert stats["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert stats["center_norm"] == pytest.approx(2.0)
    sharp = collapse_stats(teacher, torch.zeros(6, 2), torch.zeros(1, 2), teacher_temp=0.1, student_temp=0.1)
    assert sharp["top_dim_mass"] > 0.99 and sharp["effective_dims"] < 1.01
    assert sharp["kl_teacher_student"] == pytest.approx(math.log(2), abs=1e-3)


def test_detector_needs_patience_windows_in_a_row_and_warns_once() -> None:
    collapsed = {"teacher_entropy": 0.0, "top_dim_mass": 0.9, "effective_dims": 1.2}
    healthy = {"teacher_entropy": 1.0, "top_dim_mass": 0.1, "effective_dims": 30.0}
    detector = CollapseDetector(out_dim=64, window=2, patience=2)
    sequence = [collapsed, collapsed, healthy, healthy, collapsed, collapsed]  # streak broken by healthy
    assert [detector.observe(s) for s in sequence] == [None] * 6
    assert detector.observe(collapsed) is None
    warning = detector.observe(collapsed)
    assert warning is not None and "dominant-dimension collapse" in warning and "center_momentum" in warning
    assert all(detector.observe(collapsed) is None for _ in range(6))  # once per run


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Trainer, list[dict[str, float]]]:
    data = make_image_folder(tmp_path / "images", n=16)
    cfg = resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}",
                                    f"run.output_dir={tmp_path / name}", "run.epochs=4",
                                    "run.collapse_window=2", "run.collapse_patience=2", *extra])
    trainer = Trainer(cfg)
    trainer.fit()
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return trainer, [json.loads(line) for line in lines if '"teacher_entropy"' in line]


@pytest.mark.parametrize(("mode", "settings"), [
    # No centring and a very sharp teacher: every image goes to the same prototype.
    ("dominant-dimension collapse", ["loss.center_momentum=1", "loss.teacher_temp=0.005",
                                     "loss.warmup_teacher_temp=0.005", "optim.lr=0.05"]),
    # A teacher far too soft: flat outputs, nothing to learn.
    ("uniform collapse", ["loss.teacher_temp=10", "loss.warmup_teacher_temp=10"]),
])
def test_provoked_collapse_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, settings: list[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="dinofeat.training"):
        trainer, records = _run(tmp_path, "run", *settings)
    assert trainer.collapse[0].warned
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "collapse" in r.getMessage()]
    assert len(warnings) == 1 and mode in warnings[0]
    assert any("COLLAPSE" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert sum("collapse_warning" in r for r in records) == 1
    assert {"teacher_entropy", "kl_teacher_student", "center_norm", "effective_dims"} <= set(records[0])
    if mode.startswith("uniform"):
        assert records[-1]["teacher_entropy"] > 0.99 * math.log(64)
    else:
        assert records[-1]["effective_dims"] < 4


def test_healthy_tiny_run_is_not_flagged(tmp_path: Path) -> None:
    trainer, records = _run(tmp_path, "run")
    assert not trainer.collapse[0].warned
    assert min(r["effective_dims"] for r in records) > 5


def test_dinov2_guard_watches_the_patch_targets_too(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    settings = ["objective.name=dinov2", "loss.teacher_temp=10", "loss.warmup_teacher_temp=10"]
    with caplog.at_level(logging.INFO, logger="dinofeat.training"):
        trainer, records = _run(tmp_path, "run", *settings)
    assert [d.warned for d in trainer.collapse] == [True, True]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "collapse" in r.getMessage()]
    assert len(warnings) == 1 and "masked patch tokens (iBOT)" in warnings[0]
    assert records[-1]["patch_teacher_entropy"] > 0.99 * math.log(64)
