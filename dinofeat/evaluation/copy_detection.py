"""Copy detection on Copydays (DINO paper, Table 4), exact to the official ``eval_copy_detection.py``.

Images resized to ``imsize`` x ``imsize`` (bicubic, ImageNet normalisation); descriptor CLS ⊕
GeM(p=4) of the last block's patch tokens; optionally centred and PCA-whitened (power 0.5) with
statistics of a separate set of images; L2-normalised; the top 20 originals (plus distractors) of
every query by cosine similarity; the Holidays package's trapezoidal AP over that list.

Copydays layout (``COPYDAYS/original``, ``strong``, ``jpegqual/<q>``, ``crops/<c>``, ``.jpg`` files):
a query of block ``strong`` matches the originals whose file names share its first four characters;
in every other block query ``i`` (sorted names) is a copy of original ``i``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.inputs import iter_batches
from dinofeat.data.preprocess import pil_geometry, to_normalized_tensor
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.search.descriptors import cls_gem
from dinofeat.search.neighbors import as_float_tensor, build_index, search

DEFAULT_TOP = 20
COPYDAYS_BLOCKS = (
    ["original", "strong"]
    + [f"jpegqual/{q}" for q in (3, 5, 8, 10, 15, 20, 30, 50, 75)]
    + [f"crops/{c}" for c in (10, 15, 20, 30, 40, 50, 60, 70, 80)]
)
#: What the paper's table reports.
MAIN_BLOCK = "strong"


# ------------------------------------------------------------------ descriptors
@torch.inference_mode()
def descriptors(model: FeatureExtractor, images: Any, batch_size: int = 16) -> torch.Tensor:
    """CLS ⊕ GeM(p=4) descriptors (N, 2D), not normalised, of any input ``model.embed`` accepts
    (a float tensor (N, 3, H, W) is taken as preprocessed)."""
    rows = [
        cls_gem(model, batch.to(model.device, model.dtype))
        for batch in iter_batches(images, model.preprocess, None, batch_size)
    ]
    return torch.cat(rows).float().cpu()


@dataclass(frozen=True)
class CopyDetectionTransform:
    """PIL image -> model input of the official script: resize to ``imsize`` x ``imsize`` (bicubic,
    aspect not kept), ImageNet normalisation. A class so that DataLoader workers can receive it."""

    imsize: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        config = PreprocessConfig()
        return to_normalized_tensor(
            pil_geometry(config, (self.imsize, self.imsize))(image.convert("RGB")), config
        )


# ------------------------------------------------------------------ whitening
@dataclass(frozen=True)
class Whitening:
    """Centring and PCA whitening learned on separate images (official ``utils.PCA``).

    The covariance is that of the raw (uncentred) whitening features, ``W.T @ W / n``; eigenvalues
    below ``1e-5`` of the largest are raised to it; ``apply`` subtracts the whitening set's mean and
    projects on the eigenvectors scaled by ``eigenvalue ** -power``.
    """

    mean: torch.Tensor
    projection: torch.Tensor

    @classmethod
    def fit(
        cls, features: torch.Tensor | np.ndarray, dim: int | None = None, power: float = 0.5
    ) -> Whitening:
        """Learn the whitening of (n, D) descriptors, keeping the ``dim`` strongest components (all)."""
        feats = as_float_tensor(features)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"whitening needs a (n >= 2, D) feature matrix, got {tuple(feats.shape)}")
        covariance = (feats.T @ feats / feats.shape[0]).numpy()
        values, vectors = np.linalg.eigh(covariance)
        values = np.maximum(values, values.max() * 1e-5)
        order = np.argsort(values)[::-1][: dim or feats.shape[1]]
        projection = np.dot(np.diag(1.0 / values[order] ** power), vectors[:, order].T)
        return cls(feats.mean(dim=0), torch.from_numpy(projection).float())

    def apply(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Whitened (n, dim) features (not normalised)."""
        centred = as_float_tensor(x) - self.mean
        return (self.projection @ centred.T).T


# ------------------------------------------------------------------ metric
def trapezoidal_ap(ranks: Sequence[int], num_positives: int) -> float:
    """AP of one search from the sorted 0-based ranks of the positives found (Holidays package's
    ``score_ap_from_ranks_1``); positives not in the list count as missed."""
    ap = 0.0
    for found, rank in enumerate(ranks):
        before = 1.0 if rank == 0 else found / rank
        after = (found + 1) / (rank + 1)
        ap += (before + after) / (2 * num_positives)
    return ap


def copy_detection_search(
    queries: torch.Tensor, database: torch.Tensor, top: int = DEFAULT_TOP
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (num_queries, top), of the L2-normalised descriptors (faiss, exact)."""
    normalise = torch.nn.functional.normalize
    found = search(
        build_index(normalise(database.float(), dim=1)),
        normalise(queries.float(), dim=1),
        min(top, database.shape[0]),
    )
    return found.similarities, found.indices


def copy_detection_map(
    queries: torch.Tensor, database: torch.Tensor, positives: Sequence[Sequence[int]], top: int = DEFAULT_TOP
) -> tuple[float, list[float]]:
    """mAP of copy detection: per query, the trapezoidal AP of its positives among its ``top`` results.

    Args:
        queries: (num_queries, D) descriptors (whitened or not; normalised here).
        database: (num_db, D) descriptors of the originals (and distractors).
        positives: Per query, the database indices of its originals.
        top: Length of the result list.

    Returns:
        (mAP, per-query APs).
    """
    if len(positives) != queries.shape[0]:
        raise ValueError(f"{len(positives)} positive lists for {queries.shape[0]} queries")
    _, indices = copy_detection_search(queries, database, top)
    aps = []
    for row, wanted in zip(indices.tolist(), positives, strict=True):
        if not wanted:
            raise ValueError("every query needs at least one positive")
        originals = set(wanted)
        ranks = [rank for rank, index in enumerate(row) if index in originals]
        aps.append(trapezoidal_ap(ranks, len(wanted)))
    return float(np.mean(aps)), aps


# ------------------------------------------------------------------ dataset layout
@dataclass(frozen=True)
class CopydaysBlock:
    name: str
    files: list[Path]
    positives: list[list[int]]


def copydays_blocks(root: str | os.PathLike[str]) -> tuple[list[Path], list[CopydaysBlock]]:
    """The originals and the query blocks present under ``root`` (``original`` is required).

    Raises:
        FileNotFoundError: no ``original`` folder or it holds no ``.jpg``.
        ValueError: a block other than ``strong`` does not hold one copy per original.
    """
    base = Path(root)
    originals = _jpgs(base / "original")
    if not originals:
        raise FileNotFoundError(f"no Copydays originals: {base / 'original'} is missing or has no .jpg files")
    blocks = []
    for name in COPYDAYS_BLOCKS:
        files = _jpgs(base / name)
        if not files:
            continue
        if name == "strong":
            positives = [[i for i, o in enumerate(originals) if o.name[:4] == q.name[:4]] for q in files]
            orphan = next((q for q, p in zip(files, positives, strict=True) if not p), None)
            if orphan is not None:
                raise ValueError(
                    f"{orphan}: no original shares its first four characters "
                    f"({orphan.name[:4]!r}) in {base / 'original'}"
                )
        else:
            if len(files) != len(originals):
                raise ValueError(
                    f"{base / name} holds {len(files)} images, expected one per original ({len(originals)})"
                )
            positives = [[i] for i in range(len(files))]
        blocks.append(CopydaysBlock(name, files, positives))
    return originals, blocks


def _jpgs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.jpg") if p.is_file()) if folder.is_dir() else []
