"""One training step on the bench_train config with the student's blocks as timm's ``Block``
(DropPath multiplies whole-batch branches by the mask) and as ``KeptSamplesBlock`` (branches run on
the kept rows only), alternating in one process on the same synthetic crops.

Usage:
    python bench/bench_stochastic_depth.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_train import CONFIG
from timm.models.vision_transformer import Block

from dinofeat.models.stochastic_depth import KeptSamplesBlock
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.step import DinoStep, Schedules, build_student_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    cfg = resolve_config(overrides=[*CONFIG, "run.max_iters_per_epoch=100"])
    student, teacher, _ = build_student_teacher(cfg)
    step = DinoStep(cfg, student, teacher, Schedules.from_config(cfg, 100, 1), torch.device("cpu"))
    b, c = cfg.optim.batch_size_per_gpu, cfg.crops
    generator = torch.Generator().manual_seed(0)
    crops = [torch.randn(b, 3, c.global_size, c.global_size, generator=generator) for _ in range(2)]
    crops += [torch.randn(b, 3, c.local_size, c.local_size, generator=generator)
              for _ in range(c.local_crops_number)]
    kinds = {"timm Block": Block, "KeptSamplesBlock": KeptSamplesBlock}
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for round_index in range(args.rounds + 1):
        order = list(kinds) if round_index % 2 == 0 else list(kinds)[::-1]
        for name in order:
            for block in student.backbone.blocks:
                block.__class__ = kinds[name]  # same modules and weights; only forward differs
            start = time.perf_counter()
            step(crops, 1, 0)
            if round_index:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    print(json.dumps({name: {"min_s": round(min(t), 3), "median_s": round(statistics.median(t), 3),
                             "all_s": [round(x, 3) for x in t]} for name, t in times.items()}, indent=2))


if __name__ == "__main__":
    main()
