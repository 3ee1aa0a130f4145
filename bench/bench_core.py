"""Core-library speed: embed() vs bare timm, cls_attention() vs embed(), dinofeat vs HF transformers.

All variants run in one process on the same architecture (ViT-S/16, random weights: timing only), the same
batch of decoded PIL photos and the same thread count, interleaved round-robin; the median of the
repeats is reported.

    nice -n 10 python bench/bench_core.py --threads 2 --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timing import interleaved_medians

import dinofeat
from dinofeat.data.files import list_image_files, open_image
from dinofeat.data.preprocess import preprocess_pil

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def _hf_pipeline(images: list, threads: int) -> Callable[[], torch.Tensor]:
    import transformers

    config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, image_size=224, patch_size=16,
                                    layer_norm_eps=1e-6)
    model = transformers.ViTModel(config, add_pooling_layer=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        # What facebook/dino-vits16 ships: resize to 224 x 224, ImageNet mean / std.
        transformers.ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225]).save_pretrained(tmp)
        processor = transformers.AutoImageProcessor.from_pretrained(tmp)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            return model(pixel_values=pixels).last_hidden_state[:, 0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", default=str(PHOTOS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = [open_image(p) for p in list_image_files(args.photos)]
    images = (images * (args.batch // len(images) + 1))[: args.batch]
    model = dinofeat.load("vit_s16", pretrained=False, device="cpu")
    ready = torch.stack([preprocess_pil(image, model.preprocess) for image in images])
    bare = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()

    def bare_timm() -> torch.Tensor:
        with torch.inference_mode():
            return bare(ready)

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "timm forward, ready tensors": bare_timm,
        "dinofeat embed, PIL images": lambda: model.embed(images, progress=False),
        "dinofeat embed, ready tensors": lambda: model.embed(ready, progress=False),
        "dinofeat cls_attention, ready tensors": lambda: model.cls_attention(ready, progress=False),
        "dinofeat preprocess only, PIL images": lambda: torch.stack([preprocess_pil(i, model.preprocess)
                                                                      for i in images]),
        "HF AutoImageProcessor + ViTModel, PIL images": _hf_pipeline(images, args.threads),
    }
    median = interleaved_medians(variants, args.repeats)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, {args.repeats} repeats (median)")
    for name, seconds in median.items():
        print(f"  {name:46s} {seconds * 1000:8.1f} ms   {args.batch / seconds:7.2f} img/s")
    timm_s = median["timm forward, ready tensors"]
    pil_ratio = timm_s / median["dinofeat embed, PIL images"]
    ready_ratio = timm_s / median["dinofeat embed, ready tensors"]
    print(f"(a) embed(PIL) throughput / bare timm:          {pil_ratio:.3f}x "
          "(target >= 0.95)")
    print(f"    embed(ready tensors) throughput / bare timm: {ready_ratio:.3f}x")
    print(f"    preprocessing share of embed(PIL):           "
          f"{median['dinofeat preprocess only, PIL images'] / median['dinofeat embed, PIL images']:.1%}")
    attn_ratio = median["dinofeat cls_attention, ready tensors"] / median["dinofeat embed, ready tensors"]
    print(f"(b) cls_attention time / embed time:            {attn_ratio:.3f}x (target <= 1.10)")
    hf_ratio = median["HF AutoImageProcessor + ViTModel, PIL images"] / median["dinofeat embed, PIL images"]
    print(f"(c) dinofeat speed-up over HF end to end:       {hf_ratio:.3f}x (target >= 1.5)")


if __name__ == "__main__":
    main()
