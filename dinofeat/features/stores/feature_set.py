"""Features of a labelled image folder in one safetensors file, with what is needed to reuse them safely
(the model, the kind of feature, the files and class names)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dinofeat.data.files import LabeledFiles, scan_image_folder
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import BatchFeatures, extract_features
from dinofeat.utils.atomic_write import replace_atomically

FEATURES_FORMAT = "dinofeat-features"


FEATURES_VERSION = 1


@dataclass
class FeatureSet:
    """Features of a labelled dataset with everything needed to reuse them safely."""

    features: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    class_names: list[str]
    model: str
    kind: str = "cls"

    def __post_init__(self) -> None:
        count = self.features.shape[0]
        if self.features.ndim != 2 or self.labels.shape != (count,) or len(self.files) != count:
            raise ValueError(f"inconsistent feature set: features {tuple(self.features.shape)}, "
                             f"labels {tuple(self.labels.shape)}, {len(self.files)} files")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one safetensors file atomically (temporary file, then rename)."""
        meta = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "model": self.model,
                "kind": self.kind, "dim": self.dim, "count": len(self.files), "class_names": self.class_names}
        # The file list is stored as UTF-8 bytes in a tensor: safetensors headers are capped at 100 MB.
        names = torch.frombuffer(bytearray("\n".join(self.files).encode()), dtype=torch.uint8)
        tensors = {"features": self.features.contiguous(), "labels": self.labels.long().contiguous(),
                   "files_utf8": names if names.numel() else torch.zeros(0, dtype=torch.uint8)}
        metadata = {"dinofeat": json.dumps(meta)}
        replace_atomically(lambda temporary: save_file(tensors, str(temporary), metadata=metadata), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: str | None = None, kind: str | None = None
             ) -> FeatureSet:
        """Read a file written by :meth:`save`, checking format, counts and (if given) model and kind."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"feature file not found: {path}")
        try:
            with safe_open(str(path), "pt") as handle:
                meta_text = (handle.metadata() or {}).get("dinofeat")
                if meta_text is None:
                    raise ValueError(f"{path} is not a dinofeat feature file (no 'dinofeat' metadata)")
                meta: dict[str, Any] = json.loads(meta_text)
                tensors = {key: handle.get_tensor(key) for key in ("features", "labels", "files_utf8")}
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors feature file: {error}") from None
        if meta.get("format") != FEATURES_FORMAT or meta.get("version") != FEATURES_VERSION:
            raise ValueError(f"{path}: unsupported feature file format {meta.get('format')} "
                             f"version {meta.get('version')}")
        names = tensors["files_utf8"]
        files = bytes(names.numpy()).decode().split("\n") if names.numel() else []
        loaded = cls(tensors["features"], tensors["labels"], files, list(meta["class_names"]), meta["model"],
                     meta["kind"])
        if loaded.dim != meta["dim"] or len(files) != meta["count"]:
            raise ValueError(f"{path} is corrupt: header says {meta['count']} x {meta['dim']}, "
                             f"data is {tuple(loaded.features.shape)}")
        for field_name, wanted in (("model", model), ("kind", kind)):
            if wanted is not None and meta[field_name] != wanted:
                raise ValueError(f"{path} holds features of {field_name} {meta[field_name]!r}, "
                                 f"not {wanted!r}")
        return loaded


def extract_folder(extractor: FeatureExtractor, root: str | os.PathLike[str] | LabeledFiles, *, model: str,
                   feature_fn: BatchFeatures | None = None, kind: str = "cls", batch_size: int = 64,
                   num_workers: int | None = None, progress: bool = True) -> FeatureSet | None:
    """Features of an ImageFolder-style directory as a :class:`FeatureSet` (None on ranks other than 0).

    ``root`` may also be the folder's :func:`scan_image_folder` listing, so that a caller who scanned it
    already (to check it, or to extract it repeatedly) does not walk the folder again.

    Example:
        >>> model = dinofeat.load("vit_s16")  # doctest: +SKIP
        >>> fs = extract_folder(model, "imagenette2/val", model="vit_s16")  # doctest: +SKIP
        >>> fs.features.shape  # doctest: +SKIP
        torch.Size([3925, 384])
    """
    listing = root if isinstance(root, LabeledFiles) else scan_image_folder(root)
    features = extract_features(extractor, listing.files, feature_fn=feature_fn, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
    if features is None:
        return None
    return FeatureSet(features, torch.tensor(listing.labels, dtype=torch.long),
                      [str(f) for f in listing.files], listing.class_names, model, kind)
