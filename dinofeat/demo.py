"""``dinofeat demo``: a local web page showing what a model sees in an image.

A small ASGI app (Starlette, served by uvicorn) with one static page: upload or pick an image and see
the last block's attention heads with their 60 % masks, the PCA of the patch features as colours,
the cosine-similarity map of the patch under a click, and, given an index, its nearest images.
Starlette rather than Gradio: four JSON endpoints and one page need no UI framework, the install stays
small (two pure-Python packages), and the page is testable in a plain headless browser.

Uploads are decoded in memory and never written to disk; the server binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, UnidentifiedImageError

from dinofeat.errors import ImageReadError
from dinofeat.evaluation.index import ImageIndex
from dinofeat.extractor import FeatureExtractor
from dinofeat.masks import attention_masks
from dinofeat.preprocess import to_normalized_tensor

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # beyond this a small file is a decompression bomb, not a photo
SHORT_SIDE = 224
LONG_SIDE_MAX = 448
MASK_THRESHOLD = 0.6
KEPT_ANALYSES = 32  # patch features of the last uploads, for clicks


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded file as an RGB image, refusing what is not an image, too big, or a decompression bomb.

    Raises:
        ImageReadError: with the reason, for the page to show.
    """
    if not data:
        raise ImageReadError("the upload is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageReadError(f"the upload is {len(data) / 2**20:.1f} MiB; the demo takes at most "
                             f"{MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > MAX_UPLOAD_PIXELS:
                    raise ImageReadError(f"the image is {width}x{height} = {width * height / 1e6:.0f} "
                                         f"megapixels, over the demo's {MAX_UPLOAD_PIXELS / 1e6:.0f}: "
                                         "refused as a possible decompression bomb")
                image.load()
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageReadError("the upload is not an image (no known image format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"the upload is not an image this demo can read ({error})") from None


def display_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """(H, W): the shorter side to :data:`SHORT_SIDE`, the longer at most :data:`LONG_SIDE_MAX`, both
    multiples of the patch size."""
    scale = min(SHORT_SIDE / min(width, height), LONG_SIDE_MAX / max(width, height))
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


@dataclass
class Analysis:
    """What the page shows for one image, plus the patch features that answer clicks."""

    picture: np.ndarray  # (H, W, 3) uint8, what the model saw
    attention: np.ndarray | None  # (heads, h, w), None for a CNN
    pca: np.ndarray  # (h, w, 3) uint8
    patches: torch.Tensor  # (h, w, D), L2-normalised
    cls: torch.Tensor  # (D,)
    neighbours: list[tuple[str, float]] = field(default_factory=list)


@torch.inference_mode()
def analyze(model: FeatureExtractor, image: Image.Image) -> Analysis:
    """Attention, PCA and patch features of ``image`` at :func:`display_size`."""
    height, width = display_size(image.width, image.height, model.patch_size or 32)
    picture = image.resize((width, height), Image.Resampling.BICUBIC)
    batch = to_normalized_tensor(picture, model.preprocess).unsqueeze(0)
    patches = model.patch_tokens(batch)[0].cpu()
    try:
        attention = model.cls_attention(batch)[0].cpu().numpy()
    except TypeError:  # a CNN has no attention
        attention = None
    return Analysis(np.asarray(picture), attention, pca_colours(patches),
                    torch.nn.functional.normalize(patches, dim=-1), model.embed(batch)[0].cpu())


def pca_colours(patches: torch.Tensor) -> np.ndarray:
    """The first three principal components of (h, w, D) patch features as RGB, each stretched to 0-255."""
    h, w, dim = patches.shape
    flat = patches.reshape(h * w, dim).float()
    centred = flat - flat.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:3].T
    if projected.shape[1] < 3:
        projected = torch.nn.functional.pad(projected, (0, 3 - projected.shape[1]))
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = (projected - low) / (high - low).clamp(min=1e-12)
    colours: np.ndarray = (scaled.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)
    return colours


def similarity_map(analysis: Analysis, x: float, y: float) -> np.ndarray:
    """Cosine similarity (h, w) of every patch with the patch at relative position (x, y) in [0, 1]."""
    h, w, _ = analysis.patches.shape
    row, col = min(int(y * h), h - 1), min(int(x * w), w - 1)
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise ValueError(f"click position ({x}, {y}) is outside the image")
    similarity: np.ndarray = (analysis.patches @ analysis.patches[row, col]).numpy()
    return similarity


def heatmap(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A (h, w) map in viridis, stretched to its range, at ``size`` (W, H), nearest (patches stay visible)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-12)
    rgb = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)


def attention_panel(analysis: Analysis) -> str | None:
    """Heads side by side: attention above, its 60 % mask over the picture below."""
    if analysis.attention is None:
        return None
    picture = Image.fromarray(analysis.picture)
    size = picture.size
    masks = attention_masks(torch.from_numpy(analysis.attention), MASK_THRESHOLD).numpy()
    heads = analysis.attention.shape[0]
    panel = Image.new("RGB", (size[0] * heads, size[1] * 2), "white")
    for head in range(heads):
        heat = heatmap(analysis.attention[head], size)
        mask = Image.fromarray((masks[head] * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        shaded = Image.composite(picture, Image.blend(picture, Image.new("RGB", size), 0.75), mask)
        panel.paste(heat, (head * size[0], 0))
        panel.paste(shaded, (head * size[0], size[1]))
    return png_data_url(panel)


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class DemoState:
    """The current model, the optional index and the last analyses (in memory only)."""

    def __init__(self, model_name: str, index_dir: str | None, device: str | None) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.model_name = model_name
        self.model = self._load(model_name)
        self.index = ImageIndex.open(index_dir) if index_dir else None
        self.analyses: dict[int, Analysis] = {}
        self.ids = itertools.count(1)

    def _load(self, name: str) -> FeatureExtractor:
        from dinofeat.loading import load

        return load(name, device=self.device)

    def switch(self, name: str) -> None:
        """Load another model (errors propagate to the page; the current model stays)."""
        model = self._load(name)
        with self.lock:
            self.model, self.model_name = model, name
            self.analyses.clear()

    def run(self, image: Image.Image) -> tuple[int, Analysis]:
        with self.lock:
            model = self.model
        analysis = analyze(model, image)
        if self.index is not None and self.index.kind == "cls" and self.index.dim == analysis.cls.shape[0]:
            query = torch.nn.functional.normalize(analysis.cls[None], dim=1)
            analysis.neighbours = [(hit.path, hit.score) for hit in self.index.search(query, top=6)[0]]
        with self.lock:
            number = next(self.ids)
            self.analyses[number] = analysis
            for old in sorted(self.analyses)[:-KEPT_ANALYSES]:
                del self.analyses[old]
        return number, analysis

    def index_note(self) -> str | None:
        if self.index is None:
            return None
        if self.index.kind != "cls":
            return f"the index holds {self.index.kind!r} descriptors; the demo searches 'cls' indexes"
        if self.index.dim != self.model.embed_dim:
            return f"the index was built with {self.index.model!r}; load that model to search it"
        return None

    def index_file(self, number: int) -> Path:
        if self.index is None or not 0 <= number < len(self.index):
            raise KeyError(f"no indexed image #{number}")
        return Path(self.index.files[number])


def page_html() -> str:
    return resources.files("dinofeat").joinpath("static/demo.html").read_text(encoding="utf-8")


def results_json(number: int, analysis: Analysis, state: DemoState) -> dict[str, Any]:
    picture = Image.fromarray(analysis.picture)
    files = state.index.files if state.index is not None else []
    return {
        "id": number, "model": state.model_name, "picture": png_data_url(picture),
        "attention": attention_panel(analysis),
        "pca": png_data_url(Image.fromarray(analysis.pca).resize(picture.size, Image.Resampling.NEAREST)),
        "grid": list(analysis.patches.shape[:2]),
        "neighbours": [{"index": files.index(path), "path": path, "score": round(score, 4)}
                       for path, score in analysis.neighbours],
        "index_note": state.index_note(),
    }
