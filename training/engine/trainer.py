"""The DINO training loop: data, epochs, logging, checkpoints, resume and the evaluation hook.

Example:
    >>> from dinofeat.training.config.train_config import resolve_config
    >>> cfg = resolve_config(preset="imagenette_tiny", overrides=["data.path=\\"/data/train\\""])
    >>> # Trainer(cfg).fit()
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dinofeat.data.files import list_image_files, read_file_list
from dinofeat.hub.format import load_state_dict_strict
from dinofeat.models import Backbone
from dinofeat.training.config.checks import check_config
from dinofeat.training.config.train_config import TrainConfig
from dinofeat.training.data import hue
from dinofeat.training.data.augment import MultiCropAugmentation, normalize_crops
from dinofeat.training.data.device_augment import (
    CropKind,
    DeviceMultiCrop,
    MultiCropParams,
    PendingCrops,
    collate_pending,
    crop_kinds,
)
from dinofeat.training.data.images import EpochSampler, ImageDataset, collate_crops
from dinofeat.training.engine.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from dinofeat.training.engine.init_weights import load_init_weights, resolve_init_arch
from dinofeat.training.engine.metrics import MetricsWriter
from dinofeat.training.engine.objective import (
    build_networks,
    build_step,
    collapse_detectors,
    load_loss_state,
    objective_changes,
)
from dinofeat.training.engine.preemption import RunControl, ignore_preemption_signals
from dinofeat.training.engine.rng import iteration_rng, loader_generator
from dinofeat.training.objectives.dino.head import official_head_keys_to_parametrized
from dinofeat.utils.distributed import DistInfo, barrier, init_distributed

EvalHook = Callable[[Backbone], dict[str, float]]
"""Takes the teacher backbone, returns metrics (e.g. {"knn_top1": 61.2}); called on every rank."""

_log = logging.getLogger("dinofeat.training")


def build_dataset(cfg: TrainConfig) -> ImageDataset:
    """The training images of ``cfg.data`` with the multi-crop augmentation of ``cfg.crops``."""
    d, c = cfg.data, cfg.crops
    if (d.path is None) == (d.file_list is None):
        raise ValueError("set exactly one of data.path (an image folder) and data.file_list")
    if d.channels is not None:
        from dinofeat.training.data.band_dataset import build_band_dataset

        return build_band_dataset(cfg)
    paths = list_image_files(d.path) if d.path is not None else read_file_list(str(d.file_list))
    augmentation: Callable[[Image.Image], list[torch.Tensor]]
    if d.augmentation == "device":
        augmentation = MultiCropParams(crop_kinds_of(cfg))
    else:
        # uint8 from the workers: the training process normalises whole batches (normalize_crops).
        augmentation = MultiCropAugmentation(c.global_size, c.local_size, c.global_scale, c.local_scale,
                                             c.local_crops_number, as_uint8=True)
        # A run long enough to repay the hue tables builds them now, before its workers fork: they share them.
        hue.expect_pixels(cfg.run.epochs * len(paths)
                          * (2 * c.global_size ** 2 + c.local_crops_number * c.local_size ** 2))
    return ImageDataset(paths, augmentation, seed=cfg.run.seed, cache_size=d.cache_size)


def crop_kinds_of(cfg: TrainConfig) -> list[CropKind]:
    c = cfg.crops
    return crop_kinds(c.global_size, c.local_size, c.global_scale, c.local_scale, c.local_crops_number)


def _check_same_network(saved: dict[str, Any], current: dict[str, Any], origin: str) -> None:
    """A resumed run must build the network it saved; name every model/head setting that differs."""
    # Settings a checkpoint predates are not compared; model.init only matters at the start.
    changed = [f"{section}.{key}: {saved_value!r} there, {value!r} now"
               for section in ("model", "head") for key, value in current[section].items()
               if key in saved.get(section, {}) and key not in ("drop_path_rate", "init")
               and (saved_value := saved[section][key]) != value]
    changed += objective_changes(saved, current)
    if saved.get("data", {}).get("channels") != current["data"]["channels"]:
        changed.append(f"data.channels: {saved.get('data', {}).get('channels')!r} there, "
                       f"{current['data']['channels']!r} now")
    if changed:
        raise ValueError(
            f"{origin} was written by a run with other network settings ({'; '.join(changed)}). Resume "
            "with the same settings, or start a new run (another run.output_dir, or run.resume=null)."
        )


class Trainer:
    """DINO self-distillation on one process or under torchrun.

    Args:
        cfg: Resolved configuration.
        eval_hook: Optional callable run every ``run.eval_every`` epochs on the teacher backbone.
        dist_info: Process placement; by default read from torchrun's environment.
    """

    def __init__(
        self, cfg: TrainConfig, eval_hook: EvalHook | None = None, dist_info: DistInfo | None = None
    ) -> None:
        # Checked also when built in Python, not through resolve_config.
        self.cfg = resolve_init_arch(check_config(cfg))
        self.eval_hook = eval_hook
        self.dist = dist_info or init_distributed(cfg.run.device)
        self.output_dir = Path(cfg.run.output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"run.output_dir {self.output_dir} exists and is not a folder")
        # Same seed on every rank: identical initial student and teacher everywhere.
        _seed_everything(cfg.run.seed)
        self.dataset = build_dataset(cfg)
        if self.dist.is_main and self.dataset.skipped:
            _log.warning("%d unreadable images were skipped while caching", len(self.dataset.skipped))
        self.sampler = EpochSampler(self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                    shuffle=True, seed=cfg.run.seed, drop_last=True)
        workers = cfg.data.num_workers
        collate = collate_pending if cfg.data.augmentation == "device" else collate_crops
        self.loader = DataLoader(self.dataset, batch_size=cfg.optim.batch_size_per_gpu, sampler=self.sampler,
                                 num_workers=workers, pin_memory=self.dist.device.type == "cuda",
                                 drop_last=True, collate_fn=collate, persistent_workers=workers > 0,
                                 generator=loader_generator(cfg.run.seed),
                                 worker_init_fn=ignore_preemption_signals if workers > 0 else None)
        self.iters_per_epoch = len(self.loader)
        if cfg.run.max_iters_per_epoch is not None:
            self.iters_per_epoch = min(self.iters_per_epoch, cfg.run.max_iters_per_epoch)
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"{len(self.dataset)} images give no full batch of {cfg.optim.batch_size_per_gpu} "
                f"per process "
                f"({self.dist.world_size} processes); lower optim.batch_size_per_gpu"
            )
        student, self.teacher, self.arch = build_networks(cfg)
        device = self.dist.device
        student, self.teacher = student.to(device), self.teacher.to(device)
        self.fsdp = cfg.run.strategy == "fsdp"
        self._distribute(student, device)
        # The teacher follows the (DDP-broadcast) student, as in the official code.
        self.teacher.load_state_dict(self.student_module.state_dict(), strict=True)
        if cfg.model.init is not None:  # every rank reads the same weights: no broadcast needed
            self.init_info = load_init_weights(cfg, self.student_module, self.teacher)
        self.step = build_step(cfg, self.student, self.teacher, self.iters_per_epoch, self.dist)
        self.device_crops = DeviceMultiCrop(crop_kinds_of(cfg), device)
        self.metrics = MetricsWriter(self.output_dir, enabled=self.dist.is_main)
        self.collapse = collapse_detectors(cfg, cfg.run.collapse_window or self.iters_per_epoch)
        self.control = RunControl(cfg.run.checkpoint_every, cfg.run.checkpoint_every_minutes, device)
        self.start_epoch = self.start_iter = 0
        self._maybe_resume()
        self.iterations_done = self.start_epoch * self.iters_per_epoch + self.start_iter

    def _distribute(self, student: nn.Module, device: torch.device) -> None:
        """Set ``student`` (what the step calls: DDP-wrapped, or FSDP-sharded in place along with the teacher)
        and ``student_module`` (the network itself)."""
        self.student_module = student
        self.student: nn.Module = student
        if self.fsdp:
            if not self.dist.distributed:
                raise ValueError("run.strategy=fsdp shards over several processes: start it with torchrun")
            from dinofeat.training.engine import fsdp

            mesh = fsdp.build_mesh(self.dist.world_size, device)
            fsdp.shard_model(student, mesh)
            fsdp.shard_model(self.teacher, mesh)
        elif self.dist.distributed:
            if _has_batch_norm(student):
                self.student = nn.SyncBatchNorm.convert_sync_batchnorm(student)  # type: ignore[no-untyped-call]
                self.student_module = self.student
            device_ids = [device.index] if device.type == "cuda" else None
            self.student = DistributedDataParallel(self.student, device_ids=device_ids)

    # ----------------------------------------------------------------- resume / checkpoint
    def _maybe_resume(self) -> None:
        resume = self.cfg.run.resume
        if resume is None:
            return
        path = self.output_dir / CHECKPOINT_NAME if resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            return
        self.load_state(load_checkpoint(path), origin=str(path))
        if self.dist.is_main:
            _log.info("resumed from %s at epoch %d, iteration %d of the epoch", path, self.start_epoch,
                      self.start_iter)

    def state_dict(self, next_epoch: int, iter_in_epoch: int = 0,
                   shards: str | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, scaler, centre, RNG, and the position
        of the next iteration to run (``iter_in_epoch`` of epoch ``next_epoch``; 0 at an epoch's end).
        With ``shards`` (run.strategy=fsdp) the folder of the rank files replaces weights and optimiser."""
        weights: dict[str, Any] = {"shards": shards, "world_size": self.dist.world_size} if shards else {
            "student": self.student_module.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.step.optimizer.state_dict(),
        }
        return {
            "format": "dinofeat-train",
            **weights,
            "scaler": self.step.scaler.state_dict() if self.step.scaler is not None else None,
            "dino_loss": self.step.loss_fn.state_dict(),
            "epoch": next_epoch,
            "iter_in_epoch": iter_in_epoch,
            "iteration": next_epoch * self.iters_per_epoch + iter_in_epoch,
            "rng": capture_rng_state(),
            "config": self.cfg.to_json(),
        }

    def load_state(self, ckpt: dict[str, Any], origin: str = "checkpoint") -> None:
        """Restore a dinofeat checkpoint or an official DINO ``checkpoint.pth`` (strict keys).

        Raises:
            ValueError: a dinofeat checkpoint from a run whose model or head settings differ.
            WeightsMismatchError: weights that do not fit (an official checkpoint of another model).
        """
        official = ckpt.get("format") != "dinofeat-train"
        if official and self.cfg.objective.name != "dino":
            raise ValueError(f"{origin} is not a dinofeat checkpoint; objective.name="
                             f"{self.cfg.objective.name} resumes dinofeat checkpoints only (start from "
                             "released weights with model.init)")
        if not official:
            _check_same_network(json.loads(ckpt["config"]), self.cfg.to_dict(), origin)
        if self.fsdp != ("shards" in ckpt):
            raise ValueError(f"{origin} was written {'with' if 'shards' in ckpt else 'without'} "
                             f"run.strategy=fsdp; resume it with the same run.strategy")
        if self.fsdp:
            from dinofeat.training.engine import fsdp

            # origin is the checkpoint's path; its shard folder is named relative to it
            shards = fsdp.read_shards(Path(origin).parent, ckpt["shards"], self.dist.rank,
                                      self.dist.world_size, origin)
            fsdp.load_local_shards(shards, self.student_module, self.teacher, self.step.optimizer, origin)
        else:
            self._load_full_weights(ckpt, official, origin)
        if self.step.scaler is not None and ckpt.get("scaler"):
            self.step.scaler.load_state_dict(ckpt["scaler"])
        load_loss_state(self.step, ckpt["dino_loss"])
        self.start_epoch, self.start_iter = int(ckpt["epoch"]), int(ckpt.get("iter_in_epoch", 0))
        if self.start_iter >= self.iters_per_epoch:
            raise ValueError(
                f"{origin} stopped at iteration {self.start_iter} of epoch {self.start_epoch}, but epochs "
                f"now have {self.iters_per_epoch} iterations; resume with the same data, "
                "optim.batch_size_per_gpu, number of processes and run.max_iters_per_epoch")
        if "rng" in ckpt:
            restore_rng_state(ckpt["rng"])

    def _load_full_weights(self, ckpt: dict[str, Any], official: bool, origin: str) -> None:
        student_sd, teacher_sd = ckpt["student"], ckpt["teacher"]
        if official:
            student_sd = official_head_keys_to_parametrized(
                {k.removeprefix("module."): v for k, v in student_sd.items()})
            teacher_sd = official_head_keys_to_parametrized(teacher_sd)
        load_state_dict_strict(self.student_module, student_sd, origin=f"{origin} (student)")
        load_state_dict_strict(self.teacher, teacher_sd, origin=f"{origin} (teacher)")
        self.step.optimizer.load_state_dict(_plain_optimizer_state(ckpt["optimizer"], self.step.optimizer))

    def save_checkpoint(self, next_epoch: int, iter_in_epoch: int = 0) -> None:
        """Write ``checkpoint.pth`` (rank 0) at iteration ``iter_in_epoch`` of epoch ``next_epoch``."""
        self.control.checkpoint_written()
        shards = self._save_shards(next_epoch * self.iters_per_epoch + iter_in_epoch) if self.fsdp else None
        if not self.dist.is_main:
            return
        state = self.state_dict(next_epoch, iter_in_epoch, shards)
        text = self.cfg.to_json()
        atomic_save(state, self.output_dir / CHECKPOINT_NAME, config_text=text)
        freq = self.cfg.run.saveckp_freq
        if freq and iter_in_epoch == 0 and next_epoch % freq == 0:
            atomic_save(state, self.output_dir / f"checkpoint{next_epoch - 1:04d}.pth", config_text=text)
        if shards:
            from dinofeat.training.engine.fsdp import remove_unreferenced_shards

            remove_unreferenced_shards(self.output_dir)

    def _save_shards(self, iteration: int) -> str:
        """Every rank writes its shards; returns once all have (before rank 0 commits ``checkpoint.pth``)."""
        from dinofeat.training.engine.fsdp import local_shards, save_shards

        shards = local_shards(self.student_module, self.teacher, self.step.optimizer)
        folder = save_shards(self.output_dir, iteration, self.dist.rank, self.dist.world_size, shards)
        barrier()
        return folder

    # ----------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train from the checkpoint's position to the end of ``run.epochs``; returns the last summary.

        SIGTERM / SIGUSR1 stop it after the current iteration with a checkpoint: the summary then has
        ``stopped_by`` (the signal's name) and the run continues from there when started again.
        """
        summary: dict[str, Any] = {}
        with self.control:
            for epoch in range(self.start_epoch, self.cfg.run.epochs):
                summary = self.train_one_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
                if summary["complete"]:
                    self.save_checkpoint(epoch + 1)
                if self.control.stop_reason is not None:
                    return self._stopped(summary)
                self._end_of_epoch(epoch, summary)
        return summary

    def _stopped(self, summary: dict[str, Any]) -> dict[str, Any]:
        done = self.iterations_done
        summary["stopped_by"] = self.control.stop_reason
        self.metrics.write({"preempted": {"by": self.control.stop_reason, "iterations_done": done}})
        if self.dist.is_main:
            _log.warning("stopped by %s after iteration %d; %s holds the position, run the same command to "
                         "continue", self.control.stop_reason, done, self.output_dir / CHECKPOINT_NAME)
        barrier()  # no rank exits while rank 0 is still writing
        return summary

    def _end_of_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        every = self.cfg.run.eval_every
        if self.eval_hook is not None and every and (epoch + 1) % every == 0:
            results = self.eval_hook(cast(Backbone, self.teacher.backbone))
            summary.update(results)
            self.metrics.write({"epoch": epoch, "eval": results})
        barrier()

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, Any]:
        """Iterations ``start ..`` of ``epoch``; ends early (``complete`` false) when :attr:`control` says
        stop, after writing a mid-epoch checkpoint."""
        batch = self.cfg.optim.batch_size_per_gpu
        self.sampler.set_epoch(epoch, skip=start * batch)
        self.student.train()
        self.teacher.train()
        losses, skipped, n_images, index = [], 0, 0, start
        epoch_start = tick = time.perf_counter()
        batch_images = batch * self.dist.world_size
        for index, (crops, n_skipped) in enumerate(self.loader, start=start):
            if index >= self.iters_per_epoch:
                break
            data_time = time.perf_counter() - tick
            it = epoch * self.iters_per_epoch + index
            if isinstance(crops, PendingCrops):  # the GPU data path: crops made on the device
                crops = self.device_crops(crops)
            else:
                crops = normalize_crops(crops, self.dist.device)
            with iteration_rng(self.cfg.run.seed, it, self.dist.rank, self.dist.device):
                result = self.step(crops, it, epoch)
            elapsed = time.perf_counter() - tick
            losses.append(result["loss"])
            skipped += n_skipped
            n_images += batch_images
            record: dict[str, Any] = {"epoch": epoch, "iteration": it, "iter_in_epoch": index,
                      "iters_per_epoch": self.iters_per_epoch, **result,
                      "images_per_s": batch_images / elapsed, "data_time": data_time, "iter_time": elapsed}
            warning = "; ".join(w for d in self.collapse if (w := d.observe(result)) is not None) or None
            if warning is not None:
                record["collapse_warning"] = warning
                if self.dist.is_main:
                    _log.warning(warning)
            self.metrics.write(record)
            if warning or index % self.cfg.run.log_every == 0 or index == self.iters_per_epoch - 1:
                self.metrics.progress(record)
            self.iterations_done = it + 1
            checkpoint, stop = self.control.after_iteration(it + 1)
            if checkpoint and index + 1 < self.iters_per_epoch:
                self.save_checkpoint(epoch, index + 1)
            if stop:
                break
            tick = time.perf_counter()
        duration = time.perf_counter() - epoch_start
        summary = {"epoch": epoch, "loss": float(np.mean(losses)), "skipped_images": skipped,
                   "epoch_time": duration, "images_per_s": n_images / duration,
                   "complete": index + 1 >= self.iters_per_epoch}
        if summary["complete"]:
            self.metrics.write({"epoch_summary": summary})
        return summary


def _plain_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Check group sizes and turn numpy scalars (official checkpoints) into Python floats."""
    groups = state["param_groups"]
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in groups]
    if ours != theirs:
        raise ValueError(f"checkpoint optimizer has parameter groups of sizes {theirs}, this model {ours}")
    clean = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.items()} for g in groups]
    return {"state": state["state"], "param_groups": clean}


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
