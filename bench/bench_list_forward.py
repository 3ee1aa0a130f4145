"""The student's list forward of crops of two sizes, three ways (dinofeat.models.vit.list_forward): one call
per crop size, packed tokens with nested-tensor attention, packed tokens with FlexAttention; forward +
backward time of each, interleaved, median.

Config: ViT-S/14 (384 wide, 12 blocks, 6 heads) by default, batch B images with 2 global crops at 224 and 8
local crops at 98 (DINOv2's L/14 and g/14 crops), in training mode without drop-path (the packed ways have no
stochastic depth), fp32 on CPU, bf16 autocast on CUDA.

Usage:
    python bench/bench_list_forward.py --batch 4 --repeats 5                 (CPU)
    python bench/bench_list_forward.py --batch 64 --repeats 20 --device cuda (a GPU)
    python bench/bench_list_forward.py --tiny --repeats 2                    (a check that it runs)
On CPU FlexAttention has no backward (torch 2.14): it is timed forward-only there and marked so.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch

from bench.timing import interleaved_medians
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.list_forward import list_forward_tokens
from dinofeat.models.vit.model import DinoVisionTransformer


def variant(vit: DinoVisionTransformer, crops: list[torch.Tensor], masks: list[torch.Tensor | None],
            method: str, backward: bool, device: torch.device) -> Callable[[], None]:
    def run() -> None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        with autocast, torch.set_grad_enabled(backward):
            out = list_forward_tokens(vit, crops, masks, method)  # type: ignore[arg-type]
            loss = sum(t.float().square().mean() for t in out)
        if backward:
            assert isinstance(loss, torch.Tensor)
            loss.backward()
            vit.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-block, 64-wide ViT on 64 / 32 px crops")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.tiny:
        config = ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, img_size=64)
        sizes = (64, 32)
    else:
        config = ViTConfig(patch_size=14, embed_dim=384, depth=12, num_heads=6, img_size=224,
                           layer_scale_init=1e-5)
        sizes = (224, 98)
    torch.manual_seed(0)
    vit = DinoVisionTransformer(config).to(device).train()
    vit.add_mask_token()
    b = args.batch
    crops = [torch.randn(2 * b, 3, sizes[0], sizes[0], device=device),
             torch.randn(8 * b, 3, sizes[1], sizes[1], device=device)]
    n_patches = (sizes[0] // config.patch_size) ** 2
    masks: list[torch.Tensor | None] = [torch.rand(2 * b, n_patches, device=device) < 0.3, None]
    flex_backward = device.type != "cpu"
    runs = {"calls": variant(vit, crops, masks, "calls", True, device),
            "nested": variant(vit, crops, masks, "nested", True, device),
            "flex" if flex_backward else "flex_forward_only":
                variant(vit, crops, masks, "flex", flex_backward, device)}
    if not flex_backward:
        runs["calls_forward_only"] = variant(vit, crops, masks, "calls", False, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = interleaved_medians(runs, args.repeats)
    images = b
    print(json.dumps({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "config": config.to_dict(), "batch_images": images, "crop_sizes": sizes,
                      "median_s": {k: round(v, 4) for k, v in seconds.items()},
                      "images_per_s": {k: round(images / v, 2) for k, v in seconds.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
