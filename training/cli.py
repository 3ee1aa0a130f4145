"""``dinofeat-train`` / ``python -m dinofeat.training``: train and export.

Examples::

    dinofeat-train train --preset imagenette_tiny --data /data/imagenette2/train --output-dir runs/tiny
    torchrun --nproc_per_node 8 -m dinofeat.training train --preset vit_s16_100ep --data /imagenet/train
    dinofeat-train export runs/tiny/checkpoint.pth exported/tiny --eval knn_top1=61.3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from dinofeat.training.config import PRESETS, resolve_config

from dinofeat.distributed import shutdown
from dinofeat.errors import DinofeatError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinofeat-train", description="DINO self-distillation training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train (single process, or one process per device under torchrun)")
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
    return parser


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.output_dir:
        overrides.append(f"run.output_dir={json.dumps(args.output_dir)}")
    cfg = resolve_config(args.preset, args.config, overrides)
    if args.print_config:
        print(cfg.to_json(), end="")
        return 0
    from dinofeat.training.trainer import Trainer

    hook = None
    if cfg.run.eval_every:
        if not (cfg.run.eval_train and cfg.run.eval_val):
            raise ValueError("run.eval_every needs run.eval_train and run.eval_val (labelled image folders)")
        from dinofeat.training.config import eval_preprocess
        from dinofeat.training.monitor import knn_monitor

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
    from dinofeat.training.export import export_teacher

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a configuration or input error)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _export(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, DinofeatError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dinofeat-train {args.command}: error: {message}", file=sys.stderr)
        return 2
