"""The docs model table, generated from the registry: ``python -m tools.docs_table [--check]``.

Writes ``docs/models.md`` (the path can be given); ``--check`` exits 1 when the file is out of date.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dinofeat.hub.entrypoints import entrypoint_name
from dinofeat.models import family_of
from dinofeat.registry import ModelSpec, list_models

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _percent(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _source(spec: ModelSpec) -> str:
    src = spec.source
    if src.package_path:
        return f"bundled (`{src.package_path}`)"
    if src.repo_id:
        return f"[`{src.repo_id}`](https://huggingface.co/{src.repo_id}) @ `{src.revision}`"
    return f"[official `.pth`]({src.url})"


DINOV3_SECTION = """## DINOv3 ViTs

Weights and licence: the DINOv3 weights are under the **DINOv3 License** (not Apache) and **gated**. Accept
the licence on the Hub repository page (the zoo loads the timm repositories, e.g.
`timm/vit_base_patch16_dinov3.lvd1689m`) while logged in, then `hf auth login` or set `HF_TOKEN`; without
access, `dinofeat.load` raises one `GatedModelError` naming the repository, the page and both ways to log
in. The official `.pth` files come from the time-limited signed links Meta e-mails (their names are in
each entry's `source.url`):
`dinofeat.load("dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", arch="dinov3_vitb16")`. HF transformers repos
load too: `dinofeat.load("hf-hub:facebook/dinov3-vitb16-pretrain-lvd1689m")`. `torch.hub`
names are the official ones (`dinov3_vitb16`, ...); the two satellite models keep their zoo names (the
official hub selects them with a `weights=` argument).

Exactness: against the official code (`../shared/golden/dinov3`, four ViT goldens, four sizes each) every
output (CLS, storage tokens, patch tokens, the last n intermediate layers through the final norm(s), the CLS
attention over all keys) agrees within 4.3e-6 (tests/test_golden_dinov3.py).

RoPE periods: taken from the weights file when it has them (the official `.pth` stores `rope_embed.periods`,
a persistent buffer; dtype casts of the model leave it as loaded). timm and HF files have none; dinofeat
then uses the values the released checkpoints hold, the float32 periods rounded to bfloat16
(`dinofeat.models.dinov3.rope.released_periods`; for 64-wide heads 1, 1.3359375, 1.78125, ..., 56.25,
75), which is what the official model computes with after loading a released `.pth`. The
alternative, float32 periods (what timm and transformers recompute), measured on the golden `v3_mlp`
(bf16 periods in its file, random weights far from the initialisation): max abs difference from the
official outputs 1.6e-3 (CLS), 3.7e-3 (storage tokens), 8.5e-4 (patch tokens and last-3 intermediates),
6.8e-4 (CLS attention) over the four sizes, against <= 2.1e-6 with the stored periods. (dinov3-facts
reports 2e-5 to 7.8e-5 for a ViT-S with O(1) random weights.)

Preprocessing: the official evaluation transform (`dinov3/data/transforms.py`: resize the shorter side to
256, bicubic, centre crop 224), with the ImageNet mean / std for the LVD-1689M models and the satellite mean
(0.430, 0.411, 0.296) / std (0.213, 0.156, 0.143) for the SAT-493M ones. (The official README's example
resizes to 256 x 256 without a crop; HF's `DINOv3ViTImageProcessor` resizes to 224 x 224, bilinear. Pass
`size=(H, W)` for either.)

Forward details kept from the official eval-mode code: image sides that are not multiples of 16 are
floor-cropped (the bottom / right remainder pixels are dropped by the stride-16 patch convolution; timm
asserts instead); the qkv bias is `bias * bias_mask`; `local_cls_norm` (ViT-7B, ViT-L SAT) is a
training-time norm and is never used (timm / HF files lack it: it is filled with an identity norm);
`cls_attention` is the last block's CLS-query softmax over all keys, RoPE applied to the patch queries and
keys, with the CLS and storage columns dropped and not renormalised (the storage tokens take attention
mass).

Published numbers: the k-NN / linear columns are empty for DINOv3. Its model card reports, per model,
linear-probe results on IN-ReaL, IN-R and ObjectNet (plus dense tasks), not the ImageNet-1k val k-NN and
linear top-1 of this table, and no per-model figure of that kind from the paper (arXiv:2508.10104) could be
checked offline here, so none is shown rather than one of another metric. Parameter counts are those of the
official builders (counted on the meta device).
"""


def models_table() -> str:
    """The Markdown table of every zoo model (name, torch.hub name, architecture, dim, k-NN / linear, source).

    Example:
        >>> models_table().splitlines()[0].startswith("| name |")
        True
    """
    lines = [
        "| name | torch.hub | architecture | dim | params (M) | k-NN top-1 | linear top-1 | weights "
        "| licence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in list_models():
        params = f"{spec.params_millions:g}" if spec.params_millions is not None else "-"
        arch = family_of(spec.arch).describe(spec.arch)
        lines.append(
            f"| `{spec.name}` | `{entrypoint_name(spec.name)}` | {arch} | {spec.embed_dim} "
            f"| {params} | "
            f"{_percent(spec.knn_top1)} | {_percent(spec.linear_top1)} | {_source(spec)} | {spec.license} |"
        )
    return "\n".join(lines) + "\n"


def bundled_section(spec: ModelSpec) -> str:
    """The page section of a model shipped inside the package: what it is, its evaluation, the commands."""
    extra = spec.extra
    lines = [
        f"## `{spec.name}`: dinofeat's own model\n",
        f"{spec.description}. Its weights ship inside the wheel "
        f"(`dinofeat/{spec.source.package_path}`), so it loads with no network and no cache; "
        "it is the default model of `dinofeat embed` and "
        "`dinofeat attention`. Licence: " + spec.license + ".\n",
    ]
    for key, label in (("training_command", "Trained with"), ("training_time", "Training time"),
                       ("knn_command", "Evaluated with")):
        if key in extra:
            lines.append(f"{label}: `{extra[key]}`" if "command" in key else f"{label}: {extra[key]}")
    if "imagenette_knn20" in extra:
        lines += [
            "",
            "Weighted 20-NN on Imagenette (train features from `imagenette2/train`, 3,925 `imagenette2/val` "
            "queries, T = 0.07):",
            "",
            "| network | top-1 | top-5 |",
            "|---|---|---|",
        ]
        for key, label in (("imagenette_knn20", "trained (bundled weights)"),
                           ("imagenette_knn20_random_init", "same network, random initialisation")):
            top1, top5 = extra[key]
            lines.append(f"| {label} | {top1:.1f} | {top5:.1f} |")
    return "\n".join(lines) + "\n"


CONVNEXT_SECTION = """## DINOv3 ConvNeXts: what the feature methods return

The `dinov3_convnext_*` models are CNNs (stride 32, no attention), distilled from DINOv3 ViT-7B, exact to
the official `dinov3/models/convnext.py` (the goldens in `../shared/golden/dinov3` match to 1.5e-6).

- `embed`: the official `x_norm_clstoken`, the final LayerNorm of the last stage's spatial mean (N, C).
- `patch_tokens`: `x_norm_patchtokens`, the normed last-stage map, (N, H/32, W/32, C).
- `intermediate_layers(images, n)`: the last `n` of the four stages, as the official
  `get_intermediate_layers`: a **list** of `n` tensors (N, 1 + h_s*w_s, C_s), the stage's spatial mean
  first, then its map row by row, at strides 4 / 8 / 16 / 32. Only the last stage is normed (the official
  per-stage norms are identity for stages 0-2). The widths differ, so they are not stacked as for a ViT.
- `cls_attention` and `dinofeat attention`: a clear `TypeError` (a ConvNeXt has no attention).
- Inputs need at least 32 x 32 pixels; other sides are floored by the strided convolutions as in the
  official code (an H x W image gives (H // 32) x (W // 32) tokens).
- Weights: the timm Hub copy (the default source), an HF transformers repository in the
  `DINOv3ConvNextModel` layout (`hf-hub:facebook/dinov3-convnext-tiny-pretrain-lvd1689m`), or the
  official gated `.pth` (`dinofeat.load("dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth",
  arch="dinov3_convnext_tiny")`), all mapped to the official key layout and loaded strictly.
- Preprocessing: the official classification evaluation transform (bicubic resize 256, centre crop 224,
  ImageNet mean / std).
"""


#: The page's section on a family, after the table, for the families that have one.
FAMILY_SECTIONS = {"dinov3": DINOV3_SECTION, "dinov3_convnext": CONVNEXT_SECTION}


def models_page() -> str:
    """The full ``docs/models.md`` page."""
    bundled = [bundled_section(spec) for spec in list_models() if spec.source.package_path]
    in_zoo = {spec.arch.family for spec in list_models()}
    bundled += [section for family, section in FAMILY_SECTIONS.items() if family in in_zoo]
    return (
        "# Model zoo\n\n"
        "<!-- generated by `python -m tools.docs_table` from dinofeat/registry.py; "
        "do not edit by hand -->\n\n"
        "ImageNet-1k top-1 (%) as published (k-NN: 20 neighbours on the CLS features; linear: the papers' "
        "linear probe). Load any of them with `dinofeat.load(name)` or `torch.hub.load(\"<repo>\", "
        "torch_hub_name)`.\n\n"
        + models_table()
        + "".join("\n" + section for section in bundled)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    args = parser.parse_args(argv)
    path = Path(args.path)
    page = models_page()
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current != page:
            print(f"{path} is out of date: run python -m tools.docs_table", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
