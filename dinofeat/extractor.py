"""The feature extractor returned by :func:`dinofeat.load`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dinofeat.config import PreprocessConfig
from dinofeat.inputs import count_images, iter_batches
from dinofeat.masks import upsample_to_pixels
from dinofeat.models import Backbone, TokenOutput
from dinofeat.preprocess import Size

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
                 ) -> Iterator[torch.Tensor]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        total = count_images(images)
        n_batches = -(-total // batch_size)
        show = progress if progress is not None else n_batches >= PROGRESS_MIN_BATCHES
        batches = iter_batches(images, self.preprocess, size, batch_size)
        bar = tqdm(batches, total=n_batches, disable=not show, desc=self.name or "dinofeat", unit="batch")
        for batch in bar:
            yield batch.to(self.device, self.dtype, non_blocking=True)

    def _refuse(self, what: str, lacks: str) -> TypeError:
        return TypeError(
            f"{what} needs a Vision Transformer; {self.name or 'this model'} is a CNN "
            f"({type(self.backbone).__name__}) and has no {lacks} (use embed or patch_tokens)"
        )

    @torch.inference_mode()
    def _tokens(self, images: Any, size: Size | None, batch_size: int, progress: bool | None,
                cls_attention: bool = False, blocks: Sequence[int] = (), stride: int | None = None
                ) -> Iterator[TokenOutput]:
        for batch in self._batches(images, size, batch_size, progress):
            yield self.backbone.forward_tokens(batch, cls_attention=cls_attention, blocks=blocks,
                                               patch_stride=stride)

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS feature of a preprocessed batch (N, 3, H, W), like the official model's forward.

        Unlike the other methods it keeps autograd, so the module can be fine-tuned.
        """
        features: torch.Tensor = self.backbone(x.to(self.device, self.dtype))
        return features.float()

    @torch.inference_mode()
    def embed(self, images: Any, *, size: Size | None = None, batch_size: int = 64,
              progress: bool | None = None) -> torch.Tensor:
        """Global features (N, D): the CLS token after the final norm (ResNet: average-pooled map)."""
        batches = self._batches(images, size, batch_size, progress)
        outputs = [self.backbone(batch).float() for batch in batches]
        return torch.cat(outputs)

    @torch.inference_mode()
    def patch_tokens(self, images: Any, *, size: Size | None = None, flatten: bool = False,
                     stride: int | None = None, batch_size: int = 64, progress: bool | None = None
                     ) -> torch.Tensor:
        """Final-normed patch tokens (N, h, w, D), or (N, h*w, D) with ``flatten=True``.

        For a ResNet, the last stage's feature map in the same layout. ``stride=s`` (ViTs) embeds
        overlapping patches every ``s`` pixels: a ((H - P) / s + 1) x ((W - P) / s + 1) grid, with
        the position encoding evaluated at the new patch centres (docs/dense.md); ``s`` must divide
        H - P and W - P. Families without such a grid raise NotImplementedError.
        """
        tokens = torch.cat([out.patch_grid().float()
                            for out in self._tokens(images, size, batch_size, progress, stride=stride)])
        return tokens.flatten(1, 2) if flatten else tokens

    def intermediate_layers(self, images: Any, n: int = 4, *, size: Size | None = None,
                            batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """Outputs of the last ``n`` blocks, each through the final norm: (n, N, tokens, D).

        This is what the official linear evaluation concatenates (``get_intermediate_layers``).
        """
        depth = self.backbone.depth
        if depth == 0:
            raise self._refuse("intermediate_layers", "blocks")
        if not 1 <= n <= depth:
            raise ValueError(f"n must be between 1 and the depth {depth}, got {n}")
        blocks = range(depth - n, depth)
        parts = [torch.stack(out.intermediates).float()
                 for out in self._tokens(images, size, batch_size, progress, blocks=blocks)]
        return torch.cat(parts, dim=1)

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
        maps = []
        for out in self._tokens(images, size, batch_size, progress, cls_attention=True, stride=stride):
            assert out.cls_attention is not None
            h, w = out.grid
            patch_part = out.cls_attention[:, :, out.num_prefix:]
            maps.append(patch_part.reshape(patch_part.shape[0], patch_part.shape[1], h, w).float())
        result = torch.cat(maps)
        patch = self.backbone.patch_size
        assert patch is not None  # every backbone with attention has patches
        return upsample_to_pixels(result, patch) if upsample else result
