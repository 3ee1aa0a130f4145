"""DINOv3 ViT-S/16 speed: dinofeat embed() vs the bare timm forward, and cls_attention() vs embed().

One process: dinofeat's ``dinov3_vits16`` with random weights (``pretrained=False``: timing only) and
timm's ``vit_small_patch16_dinov3`` holding the same weights (converted to timm's layout, the released
bf16 RoPE periods copied in, outputs checked equal first), the same batch of ready float tensors, the
same thread count, variants interleaved round-robin after a warm-up, median of the repeats.

    nice -n 10 python bench/bench_dinov3.py --threads 2 --batch 8 --repeats 7
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import timm
import torch
from timing import interleaved_medians

import dinofeat
from dinofeat.models.dinov3.rope import released_periods


def _timm_copy(model: dinofeat.FeatureExtractor) -> torch.nn.Module:
    """timm's DINOv3 ViT-S/16 with the weights of ``model`` (timm names; no mask token, zero qkv bias)."""
    renames = (("storage_tokens", "reg_token"), ("ls1.gamma", "gamma_1"), ("ls2.gamma", "gamma_2"))
    state = {}
    for key, value in model.backbone.state_dict().items():
        if key in ("mask_token", "rope_embed.periods") or key.endswith(("qkv.bias", "bias_mask")):
            continue  # the random init's qkv bias is zero, as in the released files timm converts
        for old, new in renames:
            key = key.replace(old, new)
        state[key] = value
    bare = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0,
                             global_pool="token").eval()
    bare.load_state_dict(state, strict=True)
    bare.rope.periods.copy_(released_periods(64))  # what the released checkpoints hold
    return bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = dinofeat.load("dinov3_vits16", pretrained=False, device="cpu")
    ready = torch.randn(args.batch, 3, args.size, args.size)
    bare = _timm_copy(model)
    with torch.inference_mode():
        difference = (bare(ready) - model.embed(ready, progress=False)).abs().max().item()

    def bare_timm() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = bare(ready)
            return out

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "timm vit_small_patch16_dinov3 forward": bare_timm,
        "dinofeat embed": lambda: model.embed(ready, progress=False),
        "dinofeat cls_attention": lambda: model.cls_attention(ready, progress=False),
    }
    median = interleaved_medians(variants, args.repeats)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, timm "
          f"{timm.__version__}, {args.threads} threads, batch {args.batch} at {args.size} px, "
          f"{args.repeats} repeats (median)")
    print(f"max |timm CLS - dinofeat embed| on the batch: {difference:.2e}")
    for name, seconds in median.items():
        print(f"  {name:40s} {seconds * 1000:8.1f} ms   {args.batch / seconds:7.2f} img/s")
    ratio = median["timm vit_small_patch16_dinov3 forward"] / median["dinofeat embed"]
    print(f"(a) embed() throughput / bare timm:   {ratio:.3f}x (target >= 0.95)")
    attention = median["dinofeat cls_attention"] / median["dinofeat embed"]
    print(f"(b) cls_attention() time / embed():   {attention:.3f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
