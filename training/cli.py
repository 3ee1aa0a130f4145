"""``dinofeat-train`` / ``python -m dinofeat.training``: train and export.

Examples::

    dinofeat-train train --preset imagenette_tiny --data /data/imagenette2/train --output-dir runs/tiny
    dinofeat-train train --preset dinov2_imagenette_tiny --data /data/imagenette2/train --output-dir runs/v2
    torchrun --nproc_per_node 8 -m dinofeat.training train --preset vit_s16_100ep --data /imagenet/train
    dinofeat-train export runs/tiny/checkpoint.pth exported/tiny --eval knn_top1=61.3
    dinofeat-train stats /data/bands --channels 5 --stretch arcsinh -o bands.json
    dinofeat-train distill --teacher vit_s16 --student vit_tiny --data /data/train --output-dir runs/distill
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dinofeat.training.config.presets import PRESETS
from dinofeat.training.config.train_config import resolve_config
from dinofeat.utils.distributed import shutdown
from dinofeat.utils.errors import DinofeatError

_TRAIN_DESCRIPTION = """\
Train a backbone by self-distillation on a folder of images (or band files).

Objectives (objective.name):
  dino    DINO (the default): cross-entropy between the teacher's centred, sharpened
          global crops and every other student crop.
  dinov2  DINOv2: the DINO loss on the CLS token, the iBOT loss on masked patch tokens of
          the global crops, and KoLeo on the student's CLS, as the official training step.
          Its settings: objective.centering (softmax | sinkhorn_knopp),
          objective.{dino,koleo,ibot}_weight, objective.ibot_separate_head and
          objective.ibot_{out,hidden,bottleneck}_dim, objective.mask_probability,
          objective.mask_ratio, objective.freeze_backbone_epochs (continued pretraining),
          model.num_register_tokens, model.drop_path_uniform; optim.lr is then the base lr
          of a total batch of 1024 (square-root rule), optim.layer_decay /
          optim.patch_embed_lr_mult the layer-wise lr, optim.clip_grad clips each of
          backbone, DINO head, iBOT head, optim.freeze_last_layer sets the last layers' lr to 0.

Presets: dino: vit_s16_100ep, vit_s16_300ep, vit_b16, resnet50_sgd, imagenette_tiny (CPU),
imagenette_gpu; dinov2: dinov2_vits14, dinov2_vits14_reg4 (GPUs), dinov2_imagenette_tiny (CPU).
Continued pretraining: --set model.init=NAME|FOLDER|FILE.pth. See docs/training.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinofeat-train", description="DINO self-distillation training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train (single process, or one process per device under torchrun)",
                           description=_TRAIN_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", choices=sorted(PRESETS), help="start from a recipe")
    train.add_argument("--config", help="YAML or JSON file of {section: {key: value}}")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one setting; VALUE is JSON (strings may be bare); repeatable")
    train.add_argument("--data", help="shortcut for --set data.path=...")
    train.add_argument("--output-dir", help="shortcut for --set run.output_dir=...")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    export = sub.add_parser("export", help="export a checkpoint's teacher backbone to dinofeat's format")
    export.add_argument("checkpoint")
    export.add_argument("output_dir")
    export.add_argument("--name")
    export.add_argument("--eval", action="append", default=[], metavar="METRIC=VALUE",
                        help="an evaluation result for the model card; repeatable")
    export.add_argument("--push-to-hub", metavar="REPO_ID")
    export.add_argument("--half", action="store_true", help="store the weights as float16")
    stats = sub.add_parser("stats", help="per-band mean / std of band files, written into a config file")
    stats.add_argument("data", help="folder of band files (.npy / .npz / .tif), or a text file listing them")
    stats.add_argument("--channels", type=int, required=True, help="bands per file")
    stats.add_argument("--layout", choices=("auto", "chw", "hwc"), default="auto")
    stats.add_argument("--sample", type=int, default=1000, help="files drawn at random (seed 0)")
    stats.add_argument("--clip-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="clip each band to these percentiles first, e.g. 0.5 99.5")
    stats.add_argument("--stretch", choices=("none", "arcsinh"), default="none")
    stats.add_argument("--arcsinh-scale", type=float, default=1.0, help="x -> asinh(x / scale)")
    stats.add_argument("-o", "--output", required=True,
                       help="JSON config to create or update (then: dinofeat-train train --config it)")
    distill = sub.add_parser("distill", help="distil a frozen teacher backbone into a smaller student")
    distill.add_argument("--teacher", required=True, help="zoo name or dinofeat model folder")
    distill.add_argument("--student", required=True,
                         help="vit_tiny / vit_small / vit_base (with --set model.patch_size=...), a zoo "
                              "name, or a JSON architecture dict")
    distill.add_argument("--preset", help="start from a training recipe (crops, optimiser, data)")
    distill.add_argument("--config", help="YAML or JSON file of {section: {key: value}}")
    distill.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    distill.add_argument("--data", help="shortcut for --set data.path=...")
    distill.add_argument("--output-dir", help="shortcut for --set run.output_dir=...")
    return parser


def _overrides(args: argparse.Namespace, *first: str) -> list[str]:
    """``first``, then the ``--set`` overrides, then the ``--data`` / ``--output-dir`` shortcuts."""
    overrides = [*first, *args.overrides]
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.output_dir:
        overrides.append(f"run.output_dir={json.dumps(args.output_dir)}")
    return overrides


def _train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.preset, args.config, _overrides(args))
    if args.print_config:
        print(cfg.to_json(), end="")
        return 0
    from dinofeat.training.engine.trainer import Trainer

    hook = None
    if cfg.run.eval_every:
        if not (cfg.run.eval_train and cfg.run.eval_val):
            raise ValueError("run.eval_every needs run.eval_train and run.eval_val (labelled image folders)")
        from dinofeat.training.config.train_config import eval_preprocess
        from dinofeat.training.engine.monitor import knn_monitor

        hook = knn_monitor(cfg.run.eval_train, cfg.run.eval_val, eval_preprocess(cfg))
    try:
        summary = Trainer(cfg, eval_hook=hook).fit()
    finally:
        shutdown()
    if "stopped_by" in summary:  # preempted: the checkpoint holds the position, a rerun continues
        return cfg.run.preempt_exit_code
    logging.getLogger("dinofeat.training").info("finished: %s", json.dumps(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from dinofeat.training.engine.export import export_teacher

    evaluation = {}
    for item in args.eval:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--eval {item!r} must look like METRIC=VALUE")
        evaluation[key] = json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
    folder = export_teacher(args.checkpoint, args.output_dir, name=args.name, evaluation=evaluation or None,
                            push_to_hub=args.push_to_hub, dtype=torch.float16 if args.half else None)
    print(folder)
    return 0


def _distill(args: argparse.Namespace) -> int:
    from dinofeat.training.engine.distill import Distiller

    student = args.student if not args.student.startswith("{") else json.loads(args.student)
    overrides = _overrides(args, f"model.arch={json.dumps(student)}",
                           f"model.distill_teacher={json.dumps(args.teacher)}")
    summary = Distiller(resolve_config(args.preset, args.config, overrides)).fit()
    logging.getLogger("dinofeat.training").info("finished: %s", json.dumps(summary))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from dinofeat.training.data.band_dataset import band_paths, band_statistics, write_stats_config

    if args.sample < 1 or args.arcsinh_scale <= 0:
        raise ValueError("--sample must be >= 1 and --arcsinh-scale > 0")
    if args.clip_percentiles and not 0 <= args.clip_percentiles[0] < args.clip_percentiles[1] <= 100:
        raise ValueError(f"--clip-percentiles must be LOW HIGH with 0 <= LOW < HIGH <= 100, got "
                         f"{args.clip_percentiles}")
    folder = Path(args.data).is_dir()
    paths = band_paths(args.data if folder else None, None if folder else args.data)
    section, skipped = band_statistics(
        paths, args.channels, args.layout, sample=args.sample, stretch=args.stretch,
        arcsinh_scale=args.arcsinh_scale,
        clip_percentiles=tuple(args.clip_percentiles) if args.clip_percentiles else None)
    file = write_stats_config(args.output, args.channels, args.layout, section)
    print(json.dumps({"bands": section, "skipped_files": len(skipped), "config": str(file)}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a configuration or input error)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        commands = {"train": _train, "export": _export, "stats": _stats, "distill": _distill}
        return commands[args.command](args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, DinofeatError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dinofeat-train {args.command}: error: {message}", file=sys.stderr)
        return 2
