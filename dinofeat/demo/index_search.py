"""The nearest images of an index (made by ``dinofeat index``) to the image on the page."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from dinofeat.data.files import open_image
from dinofeat.data.preprocess import preprocess_pil
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.model_ids import model_id
from dinofeat.search.descriptors import descriptor_fn
from dinofeat.search.index import ImageIndex

DEFAULT_TOP = 8
THUMBNAIL_PIXELS = 160


@dataclass(frozen=True)
class Neighbours:
    """Search results for the page: hits, or the reason there are none.

    Attributes:
        hits: ``{"position", "name", "score"}`` per indexed image, most similar first.
        message: Why ``hits`` is empty (another model, no index), or a summary.
    """

    hits: list[dict[str, Any]]
    message: str


class IndexSearch:
    """An opened index and the descriptors of query images in its kind."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.index = ImageIndex.open(directory)
        if len(self.index) == 0:
            raise ValueError(f"index {directory} is empty")

    def search(self, model_name: str, model: FeatureExtractor, image: Image.Image, top: int = DEFAULT_TOP
               ) -> Neighbours:
        """The ``top`` nearest indexed images, as ``dinofeat search`` finds them (eval transform)."""
        if model_id(model_name) != self.index.model:
            return Neighbours([], f"the index holds {self.index.model} descriptors; choose that model "
                                  "to search it")
        batch = preprocess_pil(image, model.preprocess).unsqueeze(0)
        with torch.inference_mode():
            query = descriptor_fn(model, self.index.kind)(batch.to(model.device))
        hits = self.index.search(query.cpu(), top=top)[0]
        rows = [{"position": h.id, "name": os.path.basename(h.path), "score": round(h.score, 4)}
                for h in hits]
        return Neighbours(rows, f"{len(rows)} nearest of {len(self.index)} indexed images")

    def thumbnail(self, position: int) -> bytes:
        """A JPEG thumbnail of the indexed image at ``position``.

        Raises:
            IndexError: no such position.
            dinofeat.utils.errors.ImageReadError: the file is gone or unreadable.
        """
        if not 0 <= position < len(self.index):
            raise IndexError(f"the index holds {len(self.index)} images; there is no #{position}")
        image = open_image(self.index.paths([position])[0])
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
