"""The docs model table, generated from the registry: ``python -m dinofeat.docs_table [--check]``.

Writes ``docs/models.md`` (the path can be given); ``--check`` exits 1 when the file is out of date.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dinofeat.config import DinoV3ConvNeXtConfig, ModelSpec, ViTConfig
from dinofeat.hub_entrypoints import entrypoint_name
from dinofeat.registry import list_models

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


def _arch(spec: ModelSpec) -> str:
    arch = spec.arch
    if isinstance(arch, DinoV3ConvNeXtConfig):
        return f"ConvNeXt, depths {'-'.join(map(str, arch.depths))}"
    if not isinstance(arch, ViTConfig):
        return "ResNet-50"
    registers = f", {arch.num_register_tokens} reg" if arch.num_register_tokens else ""
    return f"ViT /{arch.patch_size}, depth {arch.depth}, {arch.num_heads} heads{registers}"


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
        lines.append(
            f"| `{spec.name}` | `{entrypoint_name(spec.name)}` | {_arch(spec)} | {spec.embed_dim} "
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


def models_page() -> str:
    """The full ``docs/models.md`` page."""
    bundled = [bundled_section(spec) for spec in list_models() if spec.source.package_path]
    if any(isinstance(spec.arch, DinoV3ConvNeXtConfig) for spec in list_models()):
        bundled.append(CONVNEXT_SECTION)
    return (
        "# Model zoo\n\n"
        "<!-- generated by `python -m dinofeat.docs_table` from dinofeat/registry.py; "
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
            print(f"{path} is out of date: run python -m dinofeat.docs_table", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
