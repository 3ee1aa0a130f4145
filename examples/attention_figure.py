"""The DINO paper's attention figure for one image: per-head CLS attention, their mean and the 60 % masks.

    python examples/attention_figure.py ../shared/data/photos/astronaut.png --model vit_s8 -o attention.png
"""

from __future__ import annotations

import argparse

import numpy as np

import dinofeat
from dinofeat.data.files import open_image
from dinofeat.data.preprocess import pil_geometry, to_normalized_tensor
from dinofeat.viz.attention_figures import attention_figure, save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--model", default="vit_s8")
    parser.add_argument("-o", "--output", default="attention.png")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 480], metavar=("H", "W"))
    parser.add_argument("--threshold", type=float, default=0.6)
    args = parser.parse_args()

    model = dinofeat.load(args.model)
    # Resize to exactly H x W (no crop), as the official visualisation does, then feed those pixels.
    picture = pil_geometry(model.preprocess, (args.size[0], args.size[1]))(open_image(args.image))
    attn = model.cls_attention(to_normalized_tensor(picture, model.preprocess).unsqueeze(0))[0]
    masks = dinofeat.attention_masks(attn, args.threshold)
    print(f"{attn.shape[0]} heads on a {attn.shape[1]}x{attn.shape[2]} grid; patches kept per head: "
          f"{masks.sum(dim=(1, 2)).tolist()}")
    fig = attention_figure(np.asarray(picture), attn, model.patch_size or 1, args.threshold)
    print(f"wrote {save_figure(fig, args.output)}")


if __name__ == "__main__":
    main()
