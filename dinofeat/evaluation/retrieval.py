"""Image retrieval on revisited Oxford and Paris (DINO paper, Table 3), exact to the official protocol.

The official ``eval_image_retrieval.py``: every image shrunk to fit ``imsize`` x ``imsize``
(``thumbnail``, Lanczos, aspect kept, no crop), ImageNet normalisation, the CLS feature (optionally
the three-scale mean of :func:`multiscale_embed`), L2-normalised; the database ranked per query by
cosine similarity; ``compute_map`` of the revisited benchmark under the Medium protocol (easy +
hard images are positives, junk ignored) and the Hard protocol (hard images are positives, easy and
junk ignored).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.inputs import iter_batches
from dinofeat.data.preprocess import to_normalized_tensor
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.search.neighbors import as_float_tensor

DATASETS = ("roxford5k", "rparis6k")
MULTISCALE_SCALES = (1.0, 1 / math.sqrt(2), 0.5)
#: Database rows per similarity block when ranking (bounds the temporary memory).
RANK_CHUNK_ROWS = 65536
Gnd = Sequence[dict[str, Any]]


# ------------------------------------------------------------------ protocol
def retrieval_ranks(
    db_features: torch.Tensor | np.ndarray, query_features: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """(num_db, num_queries) database indices, most similar first, as the official script:
    ``argsort(-db @ q.T, dim=0)`` on L2-normalised features. ``db_features`` may be a memory map."""
    queries = torch.nn.functional.normalize(as_float_tensor(query_features), dim=1)
    blocks = []
    for start in range(0, len(db_features), RANK_CHUNK_ROWS):
        rows = as_float_tensor(db_features[start : start + RANK_CHUNK_ROWS])
        blocks.append(torch.nn.functional.normalize(rows, dim=1) @ queries.T)
    return torch.argsort(-torch.cat(blocks), dim=0)


def average_precision(positions: np.ndarray, num_positives: int) -> float:
    """The revisited benchmark's ``compute_ap``: trapezoidal AP of sorted 0-based positive ranks."""
    ranks = positions.astype(np.float64)
    found = np.arange(len(ranks), dtype=np.float64)
    before = np.where(ranks == 0, 1.0, found / np.maximum(ranks, 1))
    after = (found + 1) / (ranks + 1)
    return float(((before + after) / 2).sum() / num_positives)


def compute_map(
    ranks: np.ndarray,
    positives: Sequence[Sequence[int]],
    junk: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The revisited benchmark's ``compute_map``: (mAP, per-query AP, mean precision@k, per-query P@k).

    Junk images are taken out of the ranking: a positive's position drops by the number of junk
    images ranked before it. Queries without positives get NaN and are left out of the means.
    """
    num_queries = ranks.shape[1]
    aps = np.full(num_queries, np.nan)
    prs = np.full((num_queries, len(ks)), np.nan)
    for query in range(num_queries):
        ok = np.asarray(positives[query], dtype=np.int64)
        if ok.size == 0:
            continue
        column = ranks[:, query]
        positions = np.flatnonzero(np.isin(column, ok))
        junk_positions = np.flatnonzero(np.isin(column, np.asarray(junk[query], dtype=np.int64)))
        positions = positions - np.searchsorted(junk_positions, positions)
        aps[query] = average_precision(positions, ok.size)
        shown = positions + 1
        for j, k in enumerate(ks):
            cut = min(int(shown.max()), k)
            prs[query, j] = (shown <= cut).sum() / cut
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("no query has a positive image: nothing to evaluate")
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def check_gnd(gnd: Gnd, num_db: int, num_queries: int, source: str = "gnd") -> None:
    """Refuse a ground truth that does not fit the database: wrong query count, missing keys,
    indices out of range. ``source`` (the file) is named in the error."""
    if len(gnd) != num_queries:
        raise ValueError(f"{source} has {len(gnd)} queries but there are {num_queries} query images")
    for number, entry in enumerate(gnd):
        for key in ("easy", "hard", "junk"):
            if key not in entry:
                raise ValueError(f"{source}: query {number} lacks the {key!r} list")
            bad = [int(i) for i in entry[key] if not 0 <= int(i) < num_db]
            if bad:
                raise ValueError(
                    f"{source}: query {number} {key!r} lists database index {bad[0]}, "
                    f"but the database has {num_db} images (does the gnd file belong "
                    "to this dataset?)"
                )


def revisited_map(
    db_features: torch.Tensor | np.ndarray,
    query_features: torch.Tensor | np.ndarray,
    gnd: Gnd,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Medium and Hard mAP and mean precision@k of the revisited Oxford / Paris protocol.

    Args:
        db_features: (num_db, D) raw features (normalised here).
        query_features: (num_queries, D) raw features.
        gnd: Per query a dict with index lists ``easy``, ``hard``, ``junk`` (as ``gnd_*.pkl``).
        ks: Cut-offs of the precision.

    Returns:
        ``mapM``, ``mapH`` (fractions), ``mprM``, ``mprH`` (one per k), per-query ``apsM``,
        ``apsH``, ``prsM``, ``prsH`` (lists, NaN for a query without positives), and ``ks``.
    """
    check_gnd(gnd, len(db_features), len(query_features))
    ranks = retrieval_ranks(db_features, query_features).numpy()
    medium = compute_map(
        ranks, [list(g["easy"]) + list(g["hard"]) for g in gnd], [list(g["junk"]) for g in gnd], ks
    )
    hard = compute_map(
        ranks, [list(g["hard"]) for g in gnd], [list(g["junk"]) + list(g["easy"]) for g in gnd], ks
    )
    result: dict[str, Any] = {"ks": list(ks)}
    for suffix, (mean_ap, aps, mpr, prs) in (("M", medium), ("H", hard)):
        result[f"map{suffix}"] = mean_ap
        result[f"mpr{suffix}"] = mpr.tolist()
        result[f"aps{suffix}"] = aps.tolist()
        result[f"prs{suffix}"] = prs.tolist()
    return result


# ------------------------------------------------------------------ features
@dataclass(frozen=True)
class RetrievalTransform:
    """PIL image -> model input of the official script: shrink to fit ``imsize`` x ``imsize`` (Lanczos,
    aspect kept, never enlarged), ImageNet normalisation; ``None`` keeps the full image. A class, not a
    closure, so that DataLoader workers can receive it under any start method."""

    imsize: int | None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.imsize is not None:
            image.thumbnail((self.imsize, self.imsize), Image.Resampling.LANCZOS)
        return to_normalized_tensor(image, PreprocessConfig())  # ImageNet mean and std


def multiscale_fn(extractor: FeatureExtractor) -> Any:
    """Batch of one preprocessed image -> its multi-scale descriptor (official ``utils.multi_scale``):
    the mean of the CLS features at scales 1, 1/sqrt(2), 1/2 (bilinear), divided by its norm."""

    def compute(batch: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(batch.shape[0], extractor.embed_dim, device=batch.device)
        for scale in MULTISCALE_SCALES:
            scaled = (
                batch
                if scale == 1
                else torch.nn.functional.interpolate(
                    batch, scale_factor=scale, mode="bilinear", align_corners=False
                )
            )
            total += extractor(scaled)
        mean = total / len(MULTISCALE_SCALES)
        # Per image: the official divides the whole (1, D) batch by its norm, with batches of one.
        descriptor: torch.Tensor = mean / mean.norm(dim=1, keepdim=True)
        return descriptor

    return compute


@torch.inference_mode()
def multiscale_embed(model: FeatureExtractor, images: Any) -> torch.Tensor:
    """Multi-scale descriptors (N, D) of images, one image at a time (sizes may differ).

    ``images`` is anything :meth:`FeatureExtractor.embed` accepts: a float tensor (N, 3, H, W) is
    taken as preprocessed; other inputs get the model's preprocessing.
    """
    compute = multiscale_fn(model)
    rows = [
        compute(batch.to(model.device, model.dtype))
        for batch in iter_batches(images, model.preprocess, None, 1)
    ]
    return torch.cat(rows).float()


# ------------------------------------------------------------------ dataset layout
@dataclass(frozen=True)
class RevisitedDataset:
    """``DATA/<name>/gnd_<name>.pkl`` and ``DATA/<name>/jpg/<image>.jpg``, as the official script reads."""

    name: str
    gnd_file: Path
    db_files: list[Path]
    query_files: list[Path]
    gnd: list[dict[str, Any]]

    @classmethod
    def open(cls, data: str | os.PathLike[str], name: str) -> RevisitedDataset:
        """Read and check the ground truth; every listed image must exist."""
        if name not in DATASETS:
            raise ValueError(f"unknown retrieval dataset {name!r}; choose from {list(DATASETS)}")
        folder = Path(data) / name
        gnd_file = folder / f"gnd_{name}.pkl"
        if not gnd_file.is_file():
            raise FileNotFoundError(
                f"ground truth not found: {gnd_file} (expected DATA/{name}/gnd_{name}.pkl)"
            )
        try:
            with gnd_file.open("rb") as handle:
                cfg = pickle.load(handle)
            imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
            raise ValueError(
                f"{gnd_file} is not a revisited ground-truth file (needs imlist, qimlist, gnd): {error!r}"
            ) from None
        db_files = [folder / "jpg" / f"{stem}.jpg" for stem in imlist]
        query_files = [folder / "jpg" / f"{stem}.jpg" for stem in qimlist]
        missing = [str(path) for path in db_files + query_files if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {gnd_file} are missing, first {missing[0]}"
            )
        check_gnd(gnd, len(db_files), len(query_files), str(gnd_file))
        return cls(name, gnd_file, db_files, query_files, gnd)
