"""The demo's Starlette app: one static page and a JSON API.

Routes:
    ``GET /``: the page; ``/static/*``: its script and style.
    ``GET /api/state``: models on offer, the model status, sample names, whether an index is open.
    ``GET|POST /api/model``: the model status / ask for a model (``{"name": ...}``), loaded in the background.
    ``POST /api/analyse``: an upload (the request body, name in ``X-Filename``), ``?sample=NAME`` or
    ``?image_id=ID`` (again, with the active model) -> picture, attention, PCA, neighbours.
    ``POST /api/similarity``: ``{"image_id", "x", "y"}`` in original-image pixels -> the similarity map.
    ``GET /api/neighbour/{position}``: a thumbnail of an indexed image.

Every refusal is JSON ``{"error": message}`` with a 4xx status, which the page shows; the server
keeps running. Uploads live only in this process's memory (the last :data:`KEPT_IMAGES` images).
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dinofeat.data.files import IMAGE_SUFFIXES, open_image
from dinofeat.demo.index_search import IndexSearch
from dinofeat.demo.models import Loader, ModelSlot
from dinofeat.demo.rendering import Analysis, analyse, attention_png, pca_png, png_bytes, similarity_png
from dinofeat.demo.uploads import MAX_UPLOAD_BYTES, UploadError, decode_upload
from dinofeat.dense.views import DEFAULT_DENSE_SIZE
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.utils.errors import ImageReadError

STATIC = Path(__file__).with_name("static")
KEPT_IMAGES = 16
#: ... and at most this many pixels together (~600 MB as RGB), the oldest dropped first.
KEPT_PIXELS = 200_000_000


@dataclass(frozen=True)
class DemoSettings:
    """What ``dinofeat demo`` was started with.

    Attributes:
        model: The model loaded at start (default: the bundled one, offline).
        index: Optional index folder made by ``dinofeat index``.
        samples: Folder of sample photos offered in the page (None: uploads only).
        device: torch device (default: the best available).
        size: Shorter side, in pixels, images are resized to (whole image, whole patches).
    """

    model: str = BUNDLED_MODEL
    index: Path | None = None
    samples: Path | None = None
    device: str | None = None
    size: int = DEFAULT_DENSE_SIZE


@dataclass
class _StoredImage:
    name: str
    image: Image.Image
    analyses: dict[str, Analysis] = field(default_factory=dict)


class _Refusal(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Demo:
    """The state behind the routes: models, kept images, the index; torch work one call at a time."""

    def __init__(self, settings: DemoSettings, loader: Loader) -> None:
        self.settings = settings
        # A missing index or sample folder fails before the (slower) model load.
        self.index = IndexSearch(settings.index) if settings.index is not None else None
        self.samples = _sample_files(settings.samples)
        self.models = ModelSlot(settings.model, loader)
        self.images: OrderedDict[str, _StoredImage] = OrderedDict()
        self.compute = threading.Lock()
        self._keeping = threading.Lock()

    def keep(self, name: str, image: Image.Image) -> str:
        image_id = uuid.uuid4().hex
        with self._keeping:
            self.images[image_id] = _StoredImage(name, image)
            while len(self.images) > 1 and (len(self.images) > KEPT_IMAGES or self._pixels() > KEPT_PIXELS):
                self.images.popitem(last=False)
        return image_id

    def _pixels(self) -> int:
        return sum(kept.image.width * kept.image.height for kept in self.images.values())

    def stored(self, image_id: str) -> _StoredImage:
        with self._keeping:
            found = self.images.get(image_id)
        if found is None:
            raise _Refusal(f"image {image_id!r} is not (or no longer) held by the demo; pick it again", 404)
        return found

    def analysis(self, stored: _StoredImage) -> tuple[str, FeatureExtractor, Analysis]:
        """The active model and what it sees in ``stored`` (computed once per model)."""
        name, model = self.models.active()
        if name not in stored.analyses:
            stored.analyses[name] = analyse(model, stored.image, stored.name, self.settings.size)
        return name, model, stored.analyses[name]

    def analyse_json(self, image_id: str) -> dict[str, Any]:
        stored = self.stored(image_id)
        with self.compute:
            model_name, model, found = self.analysis(stored)
            attention = attention_png(found)
            neighbours = None
            if self.index is not None:
                result = self.index.search(model_name, model, stored.image)
                neighbours = {"hits": result.hits, "message": result.message}
            pca = pca_png(found)
        view = found.view
        return {"image_id": image_id, "name": stored.name, "model": model_name,
                "original_size": list(view.original_size), "grid": list(view.grid),
                "picture": _data_url(png_bytes(view.picture)),
                "attention": _data_url(attention) if attention else None,
                "attention_note": "" if attention else f"{model_name} is a CNN: it has no attention maps",
                "pca": _data_url(pca), "neighbours": neighbours}

    def similarity_json(self, image_id: str, x: float, y: float) -> dict[str, Any]:
        stored = self.stored(image_id)
        with self.compute:
            model_name, _, found = self.analysis(stored)
            try:
                picture, (row, col) = similarity_png(found, x, y)
            except ValueError as error:
                raise _Refusal(str(error)) from None
        return {"image_id": image_id, "model": model_name, "point": [x, y], "patch": [row, col],
                "similarity": _data_url(picture)}


def _sample_files(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    if not folder.is_dir():
        raise FileNotFoundError(f"sample folder {folder} does not exist")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _data_url(png: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(png).decode('ascii')}"


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise _Refusal(f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: DemoSettings | None = None, loader: Loader | None = None) -> Starlette:
    """The demo app; loads ``settings.model`` before returning.

    Args:
        settings: Start model, index, samples, device, size.
        loader: ``name -> FeatureExtractor`` (default: :func:`dinofeat.load` on ``settings.device``).
    """
    from dinofeat.hub.loading import load

    settings = settings or DemoSettings()
    demo = _Demo(settings, loader or (lambda name: load(name, device=settings.device)))

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def state(request: Request) -> Response:
        return JSONResponse({"models": demo.models.choices(), "status": demo.models.status().to_json(),
                             "samples": list(demo.samples), "index": demo.index is not None,
                             "size": settings.size})

    async def model(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(demo.models.status().to_json())
        body = await _json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _Refusal('send {"name": MODEL}')
        return JSONResponse(demo.models.request(name).to_json())

    async def analyse_route(request: Request) -> Response:
        image_id = request.query_params.get("image_id")
        sample = request.query_params.get("sample")
        if image_id is None and sample is not None:
            image_id = await run_in_threadpool(_open_sample, demo, sample)
        elif image_id is None:
            name = request.headers.get("x-filename", "the upload")
            data = await _read_body(request)
            image = await run_in_threadpool(decode_upload, data, name)
            image_id = demo.keep(name, image)
        return JSONResponse(await run_in_threadpool(demo.analyse_json, image_id))

    async def similarity(request: Request) -> Response:
        body = await _json(request)
        try:
            image_id, x, y = str(body["image_id"]), float(body["x"]), float(body["y"])
        except (KeyError, TypeError, ValueError):
            raise _Refusal('send {"image_id": ID, "x": X, "y": Y} (pixels of the original image)') from None
        return JSONResponse(await run_in_threadpool(demo.similarity_json, image_id, x, y))

    async def neighbour(request: Request) -> Response:
        if demo.index is None:
            raise _Refusal("the demo was started without --index", 404)
        position = int(request.path_params["position"])
        try:
            jpeg = await run_in_threadpool(demo.index.thumbnail, position)
        except (IndexError, ImageReadError) as error:
            raise _Refusal(str(error), 404) from None
        return Response(jpeg, media_type="image/jpeg")

    async def refused(request: Request, error: Exception) -> Response:
        status = error.status if isinstance(error, _Refusal) else 400
        return JSONResponse({"error": str(error)}, status_code=status)

    async def failed(request: Request, error: Exception) -> Response:
        # Shown in the page; uvicorn logs the traceback and keeps serving.
        return JSONResponse({"error": f"the demo failed: {type(error).__name__}: {error}"}, status_code=500)

    routes = [Route("/", page), Route("/api/state", state),
              Route("/api/model", model, methods=["GET", "POST"]),
              Route("/api/analyse", analyse_route, methods=["POST"]),
              Route("/api/similarity", similarity, methods=["POST"]),
              Route("/api/neighbour/{position:int}", neighbour),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, exception_handlers={_Refusal: refused, UploadError: refused,
                                                         Exception: failed})


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _Refusal("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise _Refusal("the request body must be a JSON object")
    return body


def _open_sample(demo: _Demo, sample: str) -> str:
    if sample not in demo.samples:
        names = ", ".join(demo.samples) or "none"
        raise _Refusal(f"no sample photo {sample!r}; the samples are {names}", 404)
    try:
        image = open_image(demo.samples[sample])
    except ImageReadError as error:
        raise _Refusal(str(error)) from None
    return demo.keep(sample, image)
