"""The feature extractor returned by :func:`dinofeat.load`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.inputs import count_images, image_items, iter_batches
from dinofeat.data.preprocess import Size
from dinofeat.features.loop import run_batches
from dinofeat.features.masks import upsample_to_pixels
from dinofeat.features.outputs import FeatureBatch, check_outputs, concat_batches, read_outputs
from dinofeat.models import Backbone, TokenOutput

PROGRESS_MIN_BATCHES = 4


class FeatureExtractor(nn.Module):
    """DINO features from any images: CLS embeddings, patch tokens, intermediate layers, attention.

    Every method accepts PIL images, file paths, a folder, numpy uint8 HWC arrays, uint8
    tensors (3, H, W) / (N, 3, H, W), or lists of these, which get the model's preprocessing
    (by default the official evaluation transform); a float tensor (N, 3, H, W) is taken as
    already preprocessed and used at its own size. Outputs are float32 tensors on the model's
    device.

    Example:
        >>> import dinofeat, torch
        >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        ...                        "img_size": 32}, pretrained=False)
        >>> model.embed(torch.randn(2, 3, 32, 48)).shape
        torch.Size([2, 32])
        >>> model.cls_attention(torch.randn(1, 3, 32, 48)).shape
        torch.Size([1, 2, 4, 6])
    """

    def __init__(self, backbone: Backbone, preprocess: PreprocessConfig, name: str | None = None) -> None:
        super().__init__()
        self.backbone: Backbone = backbone
        self.preprocess = preprocess
        self.name = name
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def has_attention(self) -> bool:
        """Whether the backbone has attention maps (ViTs yes, CNNs no)."""
        return bool(self.backbone.has_attention)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.config.embed_dim)

    @property
    def patch_size(self) -> int | None:
        """Pixels per patch side (None for a CNN)."""
        return self.backbone.patch_size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def __repr__(self) -> str:
        return f"FeatureExtractor(name={self.name!r}, arch={self.backbone.config})"

    # ------------------------------------------------------------------ internals
    def _batches(self, images: Any, size: Size | None, batch_size: int, progress: bool | None
                 ) -> Iterator[tuple[torch.Tensor, range]]:
        """Preprocessed batches of ``images`` (on the CPU) with the row indices they hold."""
        total = count_images(images, self.preprocess)
        n_batches = -(-total // batch_size)
        show = progress if progress is not None else n_batches >= PROGRESS_MIN_BATCHES
        batches = iter_batches(images, self.preprocess, size, batch_size)
        bar = tqdm(batches, total=n_batches, disable=not show, desc=self.name or "dinofeat", unit="batch")
        start = 0
        for batch in bar:
            yield batch, range(start, start + batch.shape[0])
            start += batch.shape[0]

    def _run(self, images: Any, size: Size | None, batch_size: int, progress: bool | None,
             forward: Callable[[torch.Tensor], TokenOutput]) -> Iterator[tuple[TokenOutput, range]]:
        batches = self._batches(images, size, batch_size, progress)
        return run_batches(batches, forward, self.device, self.dtype)

    def _refuse(self, what: str, lacks: str) -> TypeError:
        return TypeError(
            f"{what} needs a Vision Transformer; {self.name or 'this model'} is a CNN "
            f"({type(self.backbone).__name__}) and has no {lacks} (use embed or patch_tokens)"
        )

    def _rows(self, images: Any) -> tuple[Any, tuple[Path | None, ...]]:
        """The input as a list of single images (a preprocessed float batch as is), and each row's file."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images, (None,) * count_images(images)
        items = image_items(images, self.preprocess)
        return items, tuple(Path(item) if isinstance(item, (str, os.PathLike)) else None for item in items)

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS feature of a preprocessed batch (N, 3, H, W), like the official model's forward.

        Unlike the other methods it keeps autograd, so the module can be fine-tuned.
        """
        features: torch.Tensor = self.backbone(x.to(self.device, self.dtype))
        return features.float()

    def features(self, images: Any, *, size: Size | None = None,
                 outputs: str | Sequence[str] = ("cls", "patches"), n_layers: int = 4,
                 stride: int | None = None, batch_size: int = 64, progress: bool | None = None
                 ) -> dict[str, torch.Tensor]:
        """Several outputs from one forward pass per batch.

        Args:
            images: Any accepted input (see the class docstring).
            size: Preprocessing size (None: the model's own).
            outputs: Any of ``cls`` (N, D), ``patches`` (N, h, w, D), ``registers`` (N, R, D),
                ``attention`` (N, heads, h, w) and ``layers`` (n_layers, N, tokens, D); see
                :data:`dinofeat.features.outputs.FEATURE_OUTPUTS`.
            n_layers: How many of the last blocks ``layers`` holds.
            stride: Overlapping patches every ``stride`` pixels (ViTs; see :meth:`patch_tokens`).
            batch_size: Images per forward pass.
            progress: Show a progress bar (default: only for long inputs).

        Returns:
            Name -> float32 tensor on the model's device, bit for bit what :meth:`embed`,
            :meth:`patch_tokens`, :meth:`cls_attention` and :meth:`intermediate_layers` return.

        Raises:
            ValueError: an unknown output name, or ``n_layers`` outside [1, depth].
            TypeError: ``attention`` or ``layers`` of a CNN.

        Example:
            >>> import dinofeat, torch
            >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            ...                        "img_size": 32}, pretrained=False)
            >>> out = model.features(torch.randn(2, 3, 32, 48), outputs=("cls", "patches", "attention"))
            >>> [tuple(out[k].shape) for k in ("cls", "patches", "attention")]
            [(2, 32), (2, 4, 6, 32), (2, 2, 4, 6)]
        """
        names = self._check_outputs(outputs, n_layers)
        batches = self.iter_features(images, size=size, outputs=names, n_layers=n_layers, stride=stride,
                                     batch_size=batch_size, progress=progress)
        return concat_batches([batch.outputs for batch in batches], names)

    def iter_features(self, images: Any, *, size: Size | None = None,
                      outputs: str | Sequence[str] = ("cls", "patches"), n_layers: int = 4,
                      stride: int | None = None, batch_size: int = 64, progress: bool | None = None
                      ) -> Iterator[FeatureBatch]:
        """:meth:`features` batch by batch, for inputs too large to hold their outputs in memory.

        Images are decoded only as their batch comes up, so a folder of any size runs in the
        memory of one batch (plus its list of file names). The request is checked at once, before
        the first batch.

        Yields:
            A :class:`~dinofeat.features.outputs.FeatureBatch` per batch: its row indices, the file
            of each row (None for in-memory images) and the outputs of those rows.

        Example:
            >>> import dinofeat, torch
            >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            ...                        "img_size": 32}, pretrained=False)
            >>> [(b.indices, tuple(b.outputs["cls"].shape))
            ...  for b in model.iter_features(torch.randn(3, 3, 32, 32), outputs="cls", batch_size=2)]
            [(range(0, 2), (2, 32)), (range(2, 3), (1, 32))]
        """
        names = self._check_outputs(outputs, n_layers)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows, paths = self._rows(images)
        blocks = range(self.backbone.depth - n_layers, self.backbone.depth) if "layers" in names else ()
        return self._feature_batches(rows, paths, names, blocks, size, stride, batch_size, progress)

    def _feature_batches(self, rows: Any, paths: tuple[Path | None, ...], names: tuple[str, ...],
                         blocks: Sequence[int], size: Size | None, stride: int | None, batch_size: int,
                         progress: bool | None) -> Iterator[FeatureBatch]:
        def forward(batch: torch.Tensor) -> TokenOutput:
            return self.backbone.forward_tokens(batch, cls_attention="attention" in names, blocks=blocks,
                                                patch_stride=stride)

        for out, indices in self._run(rows, size, batch_size, progress, forward):
            yield FeatureBatch(indices, paths[indices.start:indices.stop], read_outputs(out, names))

    def _check_outputs(self, outputs: str | Sequence[str], n_layers: int) -> tuple[str, ...]:
        return check_outputs(outputs, model=self.name or "this model", has_attention=self.has_attention,
                             depth=self.backbone.depth, n_layers=n_layers)

    def embed(self, images: Any, *, size: Size | None = None, batch_size: int = 64,
              progress: bool | None = None) -> torch.Tensor:
        """Global features (N, D): the CLS token after the final norm (ResNet: average-pooled map)."""
        return self.features(images, size=size, outputs="cls", batch_size=batch_size,
                             progress=progress)["cls"]

    def patch_tokens(self, images: Any, *, size: Size | None = None, flatten: bool = False,
                     stride: int | None = None, batch_size: int = 64, progress: bool | None = None
                     ) -> torch.Tensor:
        """Final-normed patch tokens (N, h, w, D), or (N, h*w, D) with ``flatten=True``.

        For a ResNet, the last stage's feature map in the same layout. ``stride=s`` (ViTs) embeds
        overlapping patches every ``s`` pixels: a ((H - P) / s + 1) x ((W - P) / s + 1) grid, with
        the position encoding evaluated at the new patch centres (docs/dense.md); ``s`` must divide
        H - P and W - P. Families without such a grid raise NotImplementedError.
        """
        tokens = self.features(images, size=size, outputs="patches", stride=stride, batch_size=batch_size,
                               progress=progress)["patches"]
        return tokens.flatten(1, 2) if flatten else tokens

    def intermediate_layers(self, images: Any, n: int = 4, *, size: Size | None = None,
                            batch_size: int = 64, progress: bool | None = None
                            ) -> torch.Tensor | list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each through the final norm: (n, N, tokens, D).

        This is what the official linear evaluation concatenates (``get_intermediate_layers``).
        A ConvNeXt's "blocks" are its four stages, whose widths and strides differ: it returns a
        list of ``n`` tensors (N, 1 + h_s*w_s, C_s), the stage's pooled vector first, and only the
        last stage normed, as the official ``get_intermediate_layers`` gives them.
        """
        depth = self.backbone.depth
        if depth == 0:
            raise self._refuse("intermediate_layers", "blocks")
        if not 1 <= n <= depth:
            raise ValueError(f"n must be between 1 and the depth {depth}, got {n}")
        blocks = range(depth - n, depth)
        def forward(batch: torch.Tensor) -> TokenOutput:
            return self.backbone.forward_tokens(batch, blocks=blocks)

        outputs = [out.intermediates for out, _ in self._run(images, size, batch_size, progress, forward)]
        layers = [torch.cat([batch[i] for batch in outputs]).float() for i in range(n)]
        if len({layer.shape[1:] for layer in layers}) > 1:
            return layers
        return torch.stack(layers)

    def cls_attention(self, images: Any, *, size: Size | None = None, upsample: bool = False,
                      stride: int | None = None, batch_size: int = 64, progress: bool | None = None
                      ) -> torch.Tensor:
        """Last block's CLS-to-patch attention per head: (N, heads, h, w).

        The softmax row of the CLS query over all keys, with the CLS (and register) keys
        dropped and not renormalised, as the official ``visualize_attention.py`` does. It comes
        from the same forward pass as the features; every other block keeps the fused kernel.

        Args:
            images: Any accepted input (see the class docstring).
            size: Preprocessing size (None: the model's own).
            upsample: Nearest-neighbour upsampling by the patch size to pixels,
                (N, heads, h*P, w*P), as the official script does before saving images.
            stride: Overlapping patches every ``stride`` pixels, as in :meth:`patch_tokens` (not
                with ``upsample``: the maps no longer tile the image in P x P blocks).
            batch_size: Images per forward pass.
            progress: Show a progress bar (default: only for long inputs).

        Returns:
            float32 maps on the model's device.

        Raises:
            TypeError: the model is a CNN (ResNet-50 has no attention).

        Example:
            >>> import dinofeat, torch
            >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            ...                        "img_size": 32}, device="cpu")
            >>> model.cls_attention(torch.randn(1, 3, 32, 48), upsample=True).shape
            torch.Size([1, 2, 32, 48])
        """
        if not self.backbone.has_attention:
            raise self._refuse("cls_attention", "attention")
        if upsample and stride is not None:
            raise ValueError("upsample=True needs the ordinary grid; with stride= the patches overlap")
        result = self.features(images, size=size, outputs="attention", stride=stride, batch_size=batch_size,
                               progress=progress)["attention"]
        patch = self.backbone.patch_size
        assert patch is not None  # every backbone with attention has patches
        return upsample_to_pixels(result, patch) if upsample else result
