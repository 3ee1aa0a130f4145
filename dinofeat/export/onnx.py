"""ONNX export of any zoo model, checked against PyTorch with onnxruntime before it is kept.

The graph takes normalised images ``images`` (N, 3, H, W) and returns the requested outputs among
``cls``, ``patches`` and ``attention`` (see :mod:`dinofeat.models.export_graph`). With ``dynamic=True``
height and width are free (position-embedding resampling is computed inside the graph); otherwise
the graph is fixed to one size. The batch size is always free. Preprocessing stays outside the
graph and is written beside it as ``<name>.preprocess.json``.

Needs the ``onnx`` extra (``pip install 'dinofeat[onnx]'``: onnx and onnxruntime).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.hub.loading import load
from dinofeat.models import family_of
from dinofeat.models.export_graph import check_outputs
from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically
from dinofeat.utils.errors import DinofeatError
from dinofeat.utils.extras import require

INPUT_NAME = "images"
DEFAULT_OPSET = 17
DEFAULT_OUTPUTS = ("cls", "patches")
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2  # half precision: ~3 significant digits per operation, compounded over the blocks
CHECK_SEED = 0


class OnnxCheckError(DinofeatError, RuntimeError):
    """The exported graph, run by onnxruntime, does not reproduce the PyTorch outputs."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    preprocess_path: Path
    #: Largest absolute difference onnxruntime vs PyTorch per output over the checked inputs.
    differences: dict[str, float]
    checked_shapes: list[tuple[int, int, int, int]]


def export_module(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    """The module the graph is traced from: ``backbone``'s family's export module for ``outputs`` (a
    subset of :data:`~dinofeat.models.export_graph.OUTPUTS`), in eval mode."""
    check_outputs(outputs)
    # eval(): the exporter restores the wrapper's mode afterwards, and with it its children's.
    return family_of(backbone).export_module(backbone, outputs).eval()


class _Precision(nn.Module):
    """fp32 in and out around a half-precision graph, so that callers feed the same arrays."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(out.float() for out in self.inner(images.to(self.dtype)))


def export_onnx(model: FeatureExtractor | str | os.PathLike[str], path: str | os.PathLike[str], *,
                size: tuple[int, int] | None = None, dynamic: bool = False,
                outputs: Sequence[str] = DEFAULT_OUTPUTS, opset: int = DEFAULT_OPSET, half: bool = False,
                check: bool = True) -> OnnxExport:
    """Export ``model`` to ONNX at ``path``, check it with onnxruntime and write its preprocessing JSON.

    Args:
        model: A loaded model, or anything :func:`dinofeat.load` accepts.
        path: Output ``.onnx`` file; replaced only once the export has passed the check.
        size: (H, W) of a fixed-size graph (default: the model's crop, square). Not with ``dynamic``.
        dynamic: Free height and width (each at least one patch; remainder pixels are dropped).
        outputs: Among ``cls`` (N, D), ``patches`` (N, h, w, D), ``attention`` (N, heads, h, w; ViTs).
        opset: ONNX opset version.
        half: Weights and computation in float16 (inputs and outputs stay float32).
        check: Run the graph on two inputs (two sizes if dynamic, else two batch sizes) and compare
            with the PyTorch model in the same precision: at most 1e-4 absolute difference in fp32
            (5e-2 in fp16).

    Returns:
        The paths written and the measured differences.

    Raises:
        UnsupportedOutputError: an output the family does not have (``attention`` of a ResNet).
        OnnxCheckError: the graph's outputs differ from PyTorch's; the message gives the difference.
        ValueError: ``size`` together with ``dynamic``, or a size smaller than one patch.
        MissingExtraError: onnx (or, to check, onnxruntime) is not installed: the ``[onnx]`` extra.
    """
    if size is not None and dynamic:
        raise ValueError("give a fixed size or dynamic=True, not both")
    require("onnx", "onnx", "ONNX export")  # torch.onnx writes through it
    extractor = model if isinstance(model, FeatureExtractor) else _load(model)
    rope_dtype = getattr(extractor.backbone.config, "pos_embed_rope_dtype", "fp32")
    if rope_dtype != "fp32":  # ONNX has no bfloat16 Range / complex-free lowering of these tables
        raise ValueError(f"ONNX export needs float32 RoPE tables; this model computes them in {rope_dtype} "
                         "(pos_embed_rope_dtype; every released DINOv3 model uses fp32)")
    names = list(dict.fromkeys(outputs))
    shapes = _check_shapes(extractor, size, dynamic)
    device, dtype = extractor.device, extractor.dtype
    # Traced and checked on the CPU in the export's precision; the export module shares the weights
    # of ``work``. Half precision works on a copy (fp32 -> fp16 -> fp32 would round the caller's
    # weights); a float32 round trip is exact, so the caller's model is moved and given back.
    work = copy.deepcopy(extractor).to("cpu", torch.float16) if half else extractor.to("cpu", torch.float32)
    out = Path(path)
    differences: dict[str, float] = {}
    try:
        module: nn.Module = export_module(work.backbone, names)
        if half:
            module = _Precision(module, torch.float16)

        def write(temporary: Path) -> None:
            _trace(module, temporary, shapes[0], names, dynamic, opset)
            if check:
                tolerance = FP16_TOLERANCE if half else FP32_TOLERANCE
                differences.update(_check(temporary, work, names, shapes, tolerance))

        replace_atomically(write, out)
    finally:
        extractor.to(device, dtype)
    preprocess = out.with_name(f"{out.stem}.preprocess.json")
    write_text_atomically(preprocess, json.dumps(_preprocessing(extractor, names, size, dynamic, half,
                                                                shapes[0]), indent=1) + "\n")
    return OnnxExport(out, preprocess, differences, shapes if check else [])


def _trace(module: nn.Module, path: Path, shape: tuple[int, int, int, int], names: Sequence[str],
           dynamic: bool, opset: int) -> None:
    spatial = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(names),
                          dynamic_axes={INPUT_NAME: spatial, **{name: {0: "batch"} for name in names}})


def _load(source: str | os.PathLike[str]) -> FeatureExtractor:
    return load(source, device="cpu")


def _check_shapes(extractor: FeatureExtractor, size: tuple[int, int] | None, dynamic: bool
                  ) -> list[tuple[int, int, int, int]]:
    """The inputs of the check: the traced shape first."""
    stride = extractor.patch_size or 32
    crop = extractor.preprocess.crop
    if dynamic:  # the model's own square size, and a non-square one with remainder pixels
        return [(1, 3, crop, crop), (2, 3, crop + 2 * stride + stride // 2, max(stride, crop - stride))]
    height, width = size if size is not None else (crop, crop)
    if min(height, width) < stride:
        raise ValueError(f"size {height}x{width} is smaller than one {stride}-pixel patch")
    return [(1, 3, height, width), (2, 3, height, width)]


def _reference(extractor: FeatureExtractor, images: torch.Tensor, names: Sequence[str]
               ) -> dict[str, np.ndarray]:
    """What the PyTorch model gives through its public methods."""
    methods = {"cls": extractor.embed, "patches": extractor.patch_tokens,
               "attention": extractor.cls_attention}
    return {name: methods[name](images, progress=False).numpy() for name in names}


def _check(onnx_path: Path, extractor: FeatureExtractor, names: Sequence[str],
           shapes: Sequence[tuple[int, int, int, int]], tolerance: float) -> dict[str, float]:
    onnxruntime = require("onnxruntime", "onnx", "checking an ONNX graph")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(CHECK_SEED)
    worst: dict[str, float] = dict.fromkeys(names, 0.0)
    for shape in shapes:
        images = torch.randn(shape, generator=generator)
        got = dict(zip(names, session.run(names, {INPUT_NAME: images.numpy()}), strict=True))
        for name, expected in _reference(extractor, images, names).items():
            if got[name].shape != expected.shape:
                raise OnnxCheckError(f"ONNX output {name!r} has shape {got[name].shape} for input {shape}, "
                                     f"PyTorch gives {expected.shape}")
            difference = float(np.abs(got[name] - expected).max())
            worst[name] = max(worst[name], difference)
            if not difference <= tolerance:
                raise OnnxCheckError(f"ONNX output {name!r} differs from PyTorch by {difference:.3g} "
                                     f"(> {tolerance:g}) on an input of shape {shape}; nothing was written")
    return worst


def _preprocessing(extractor: FeatureExtractor, names: Sequence[str], size: tuple[int, int] | None,
                   dynamic: bool, half: bool, traced: tuple[int, int, int, int]) -> dict[str, Any]:
    config = extractor.preprocess
    fixed = None if dynamic else list(traced[2:])
    if fixed is not None and size is None:
        rule = (f"resize the shorter side to {config.resize} ({config.interpolation}), centre-crop "
                f"{config.crop}x{config.crop}")
    elif fixed is not None:
        rule = f"resize to exactly {fixed[0]}x{fixed[1]} ({config.interpolation}), no crop"
    else:
        rule = (f"any size; the model's own: resize the shorter side to {config.resize} "
                f"({config.interpolation}), centre-crop {config.crop}x{config.crop}")
    return {
        "model": extractor.name,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                  "height": fixed[0] if fixed else None, "width": fixed[1] if fixed else None,
                  "dynamic_size": dynamic, "multiple_of": extractor.patch_size or 32},
        "resize": config.resize, "crop": config.crop, "interpolation": config.interpolation,
        "resize_rule": rule,
        "scale": 1 / 255, "mean": list(config.mean), "std": list(config.std),
        "normalize": "(pixels / 255 - mean) / std, per channel",
        "outputs": list(names), "precision": "float16" if half else "float32",
    }
