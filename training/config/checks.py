"""Range checks of a training configuration: every setting out of range is named, all at once, before any
data is read (``resolve_config`` runs them; the trainer runs them again for configs built in Python)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dinofeat.training.config.train_config import TrainConfig


def config_problems(cfg: TrainConfig) -> list[str]:
    """What is out of range in ``cfg``, one message per setting (empty when all is well).

    Example:
        >>> from dinofeat.training.config.train_config import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.run.epochs = 5
        >>> config_problems(cfg)
        ['optim.warmup_epochs (10) must lie in [0, run.epochs = 5]']
    """
    o, c, h, r, loss, d = cfg.optim, cfg.crops, cfg.head, cfg.run, cfg.loss, cfg.data
    at_least_one = {
        "run.epochs": r.epochs, "optim.batch_size_per_gpu": o.batch_size_per_gpu,
        "crops.global_size": c.global_size, "crops.local_size": c.local_size, "head.out_dim": h.out_dim,
        "head.hidden_dim": h.hidden_dim, "head.bottleneck_dim": h.bottleneck_dim, "head.nlayers": h.nlayers,
        "run.log_every": r.log_every, "run.collapse_patience": r.collapse_patience,
    }
    at_least_zero = {
        "crops.local_crops_number": c.local_crops_number, "optim.min_lr": o.min_lr,
        "optim.weight_decay": o.weight_decay, "optim.weight_decay_end": o.weight_decay_end,
        "optim.clip_grad": o.clip_grad, "optim.freeze_last_layer": o.freeze_last_layer,
        "run.saveckp_freq": r.saveckp_freq, "run.eval_every": r.eval_every, "data.num_workers": d.num_workers,
        "loss.warmup_teacher_temp_epochs": loss.warmup_teacher_temp_epochs,
        "run.checkpoint_every": r.checkpoint_every,
        "run.checkpoint_every_minutes": r.checkpoint_every_minutes,
        "run.collapse_window": r.collapse_window,
    }
    positive = {
        "optim.lr": o.lr, "loss.teacher_temp": loss.teacher_temp,
        "loss.warmup_teacher_temp": loss.warmup_teacher_temp, "loss.student_temp": loss.student_temp,
    }
    one_or_null = {"run.max_iters_per_epoch": r.max_iters_per_epoch, "data.cache_size": d.cache_size}
    choices = {"optim.optimizer": (o.optimizer, ("adamw", "sgd", "lars")),
               "run.precision": (r.precision, ("auto", "fp32", "fp16", "bf16")),
               "run.strategy": (r.strategy, ("ddp", "fsdp")),
               "data.augmentation": (cfg.data.augmentation, ("cpu", "device"))}
    problems = [f"{k} must be >= 1, got {v}" for k, v in at_least_one.items() if v < 1]
    problems += [f"{k} must be >= 0, got {v}" for k, v in at_least_zero.items() if v < 0]
    problems += [f"{k} must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    problems += [f"{k} must be >= 1 or null, got {v}"
                 for k, v in one_or_null.items() if v is not None and v < 1]
    problems += [f"{k} must be one of {', '.join(allowed)}, got {v!r}"
                 for k, (v, allowed) in choices.items() if v not in allowed]
    if not 0 <= o.warmup_epochs <= r.epochs:
        problems.append(f"optim.warmup_epochs ({o.warmup_epochs}) must lie in [0, run.epochs = {r.epochs}]")
    if not 0 <= r.preempt_exit_code <= 255:
        problems.append(f"run.preempt_exit_code must lie in [0, 255], got {r.preempt_exit_code}")
    if not 0 <= o.momentum_teacher <= 1:
        problems.append(f"optim.momentum_teacher must lie in [0, 1], got {o.momentum_teacher}")
    if not 0 <= loss.center_momentum <= 1:  # 1 keeps the centre at zero: no centring (paper ablation)
        problems.append(f"loss.center_momentum must lie in [0, 1], got {loss.center_momentum}")
    problems += _own_data_problems(cfg)
    problems += _objective_problems(cfg)
    if not 0 <= cfg.model.drop_path_rate < 1:
        problems.append(f"model.drop_path_rate must lie in [0, 1), got {cfg.model.drop_path_rate}")
    for name, (low, high) in (("crops.global_scale", c.global_scale), ("crops.local_scale", c.local_scale)):
        if not 0 < low <= high <= 1:
            problems.append(f"{name} must be (low, high) with 0 < low <= high <= 1, got {(low, high)}")
    return problems


def _own_data_problems(cfg: TrainConfig) -> list[str]:
    """Range checks of the band, continued-pretraining and layer-decay settings."""
    b, d, o = cfg.bands, cfg.data, cfg.optim
    problems = []
    if d.channels is not None and d.channels < 1:
        problems.append(f"data.channels must be >= 1 or null, got {d.channels}")
    if d.channels is not None and d.augmentation == "device":
        problems.append("data.augmentation=device makes RGB crops; multi-band data (data.channels) uses the "
                        "CPU band augmentation: leave data.augmentation=cpu")
    if d.channels is not None:
        for name in ("mean", "std", "clip_low", "clip_high"):
            values = getattr(b, name)
            if values is not None and len(values) != d.channels:
                problems.append(f"bands.{name} has {len(values)} values for data.channels = {d.channels}")
    if b.std is not None and min(b.std) <= 0:
        problems.append(f"bands.std must be positive, got {b.std}")
    for name in ("intensity_p", "noise_p", "blur_p"):
        if not 0 <= getattr(b, name) <= 1:
            problems.append(f"bands.{name} must lie in [0, 1], got {getattr(b, name)}")
    if b.arcsinh_scale <= 0 or b.noise_std < 0 or b.intensity_range < 0:
        problems.append("bands.arcsinh_scale must be > 0 and bands.noise_std, bands.intensity_range >= 0")
    if not 0 < b.blur_sigma[0] <= b.blur_sigma[1]:
        problems.append(f"bands.blur_sigma must be (low, high) with 0 < low <= high, got {b.blur_sigma}")
    if not 0 < o.layer_decay <= 1 or not 0 < o.patch_embed_lr_mult <= 1:
        problems.append(f"optim.layer_decay and optim.patch_embed_lr_mult must lie in (0, 1], got "
                        f"{o.layer_decay}, {o.patch_embed_lr_mult}")
    choices = {"data.channel_layout": (d.channel_layout, ("auto", "chw", "hwc")),
               "bands.stretch": (b.stretch, ("none", "arcsinh")),
               "model.patch_embed_adapt": (cfg.model.patch_embed_adapt, ("repeat", "average"))}
    problems += [f"{k} must be one of {', '.join(allowed)}, got {v!r}"
                 for k, (v, allowed) in choices.items() if v not in allowed]
    return problems


def _objective_problems(cfg: TrainConfig) -> list[str]:
    """Range checks of the objective section (DINOv2's settings)."""
    ob, h = cfg.objective, cfg.head
    problems = [f"{k} must be one of {', '.join(allowed)}, got {v!r}"
                for k, (v, allowed) in {"objective.name": (ob.name, ("dino", "dinov2")),
                                        "objective.centering": (ob.centering, ("softmax", "sinkhorn_knopp"))
                                        }.items() if v not in allowed]
    low, high = ob.mask_ratio
    if not 0 <= low <= high <= 1:
        problems.append(f"objective.mask_ratio must be (low, high) with 0 <= low <= high <= 1, "
                        f"got {(low, high)}")
    if not 0 <= ob.mask_probability <= 1:
        problems.append(f"objective.mask_probability must lie in [0, 1], got {ob.mask_probability}")
    problems += [f"objective.{k} must be >= 0, got {v}" for k, v in
                 {"dino_weight": ob.dino_weight, "koleo_weight": ob.koleo_weight,
                  "ibot_weight": ob.ibot_weight,
                  "freeze_backbone_epochs": ob.freeze_backbone_epochs}.items() if v < 0]
    problems += [f"objective.{k} must be >= 1 or null, got {v}" for k, v in
                 {"ibot_out_dim": ob.ibot_out_dim, "ibot_hidden_dim": ob.ibot_hidden_dim,
                  "ibot_bottleneck_dim": ob.ibot_bottleneck_dim}.items() if v is not None and v < 1]
    if not ob.ibot_separate_head:
        shared = {"ibot_out_dim": (ob.ibot_out_dim, h.out_dim),
                  "ibot_hidden_dim": (ob.ibot_hidden_dim, h.hidden_dim),
                  "ibot_bottleneck_dim": (ob.ibot_bottleneck_dim, h.bottleneck_dim)}
        problems += [f"objective.{k}={v} differs from head.{k.removeprefix('ibot_')}={ours}, but the iBOT "
                     "head is the DINO head (objective.ibot_separate_head=false): set them equal, or "
                     "objective.ibot_separate_head=true" for k, (v, ours) in shared.items()
                     if v is not None and v != ours]
    if ob.name == "dinov2" and ob.centering == "sinkhorn_knopp" and cfg.optim.batch_size_per_gpu < 2:
        problems.append(
            f"objective.centering=sinkhorn_knopp needs optim.batch_size_per_gpu >= 2, got "
            f"{cfg.optim.batch_size_per_gpu}: it spreads the batch evenly over the prototypes, and with one "
            "image the only rows to spread are the two views of that image, which it pushes apart; use "
            "objective.centering=softmax or a larger batch")
    if cfg.model.num_register_tokens is not None and cfg.model.num_register_tokens < 0:
        problems.append(f"model.num_register_tokens must be >= 0 or null, "
                        f"got {cfg.model.num_register_tokens}")
    return problems


def check_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` if every setting is in range; else ValueError naming each one that is not."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError("invalid training config: " + "; ".join(problems))
    return cfg
