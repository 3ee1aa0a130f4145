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
from dinofeat.models import Backbone, DinoResNet, DinoVisionTransformer, TokenOutput
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
    def is_vit(self) -> bool:
        return isinstance(self.backbone, DinoVisionTransformer)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.config.embed_dim)

    @property
    def patch_size(self) -> int | None:
        """Pixels per patch side (None for a CNN)."""
        return self.backbone.config.patch_size if isinstance(self.backbone, DinoVisionTransformer) else None

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
        total = count_images(images, self.preprocess)
        n_batches = -(-total // batch_size)
        show = progress if progress is not None else n_batches >= PROGRESS_MIN_BATCHES
        batches = iter_batches(images, self.preprocess, size, batch_size)
        bar = tqdm(batches, total=n_batches, disable=not show, desc=self.name or "dinofeat", unit="batch")
        for batch in bar:
            yield batch.to(self.device, self.dtype, non_blocking=True)

    def _vit(self, what: str) -> DinoVisionTransformer:
        if not isinstance(self.backbone, DinoVisionTransformer):
            raise TypeError(
                f"{what} needs a Vision Transformer; {self.name or 'this model'} is a CNN "
                f"({type(self.backbone).__name__}) and has no attention (use embed or patch_tokens)"
            )
        return self.backbone

    @torch.inference_mode()
    def _tokens(self, images: Any, size: Size | None, batch_size: int, progress: bool | None,
                cls_attention: bool = False, blocks: Sequence[int] = ()) -> Iterator[TokenOutput]:
        vit = self._vit("this method")
        for batch in self._batches(images, size, batch_size, progress):
            yield vit.forward_tokens(batch, cls_attention=cls_attention, blocks=blocks)

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
                     batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """Final-normed patch tokens (N, h, w, D), or (N, h*w, D) with ``flatten=True``.

        For a ResNet, the last stage's feature map in the same layout.
        """
        outputs = []
        for batch in self._batches(images, size, batch_size, progress):
            if isinstance(self.backbone, DinoResNet):
                grid = self.backbone.feature_map(batch).permute(0, 2, 3, 1)
            else:
                result = self.backbone.forward_tokens(batch)
                h, w = result.grid
                grid = result.patches.reshape(batch.shape[0], h, w, -1)
            outputs.append(grid.float())
        tokens = torch.cat(outputs)
        return tokens.flatten(1, 2) if flatten else tokens

    def intermediate_layers(self, images: Any, n: int = 4, *, size: Size | None = None,
                            batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """Outputs of the last ``n`` blocks, each through the final norm: (n, N, tokens, D).

        This is what the official linear evaluation concatenates (``get_intermediate_layers``).
        """
        depth = len(self._vit("intermediate_layers").blocks)
        if not 1 <= n <= depth:
            raise ValueError(f"n must be between 1 and the depth {depth}, got {n}")
        blocks = range(depth - n, depth)
        parts = [torch.stack(out.intermediates).float()
                 for out in self._tokens(images, size, batch_size, progress, blocks=blocks)]
        return torch.cat(parts, dim=1)

    def cls_attention(self, images: Any, *, size: Size | None = None, upsample: bool = False,
                      batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """Last block's CLS-to-patch attention per head: (N, heads, h, w).

        The softmax row of the CLS query over all keys, with the CLS (and register) keys
        dropped and not renormalised, as the official ``visualize_attention.py`` does. It comes
        from the same forward pass as the features; every other block keeps the fused kernel.

        Args:
            images: Any accepted input (see the class docstring).
            size: Preprocessing size (None: the model's own).
            upsample: Nearest-neighbour upsampling by the patch size to pixels,
                (N, heads, h*P, w*P), as the official script does before saving images.
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
        vit = self._vit("cls_attention")
        maps = []
        for out in self._tokens(images, size, batch_size, progress, cls_attention=True):
            assert out.cls_attention is not None
            h, w = out.grid
            patch_part = out.cls_attention[:, :, out.num_prefix:]
            maps.append(patch_part.reshape(patch_part.shape[0], patch_part.shape[1], h, w).float())
        result = torch.cat(maps)
        return upsample_to_pixels(result, vit.config.patch_size) if upsample else result
