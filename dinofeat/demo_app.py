"""The demo's HTTP side: a Starlette app over :class:`dinofeat.demo.DemoState`, served by uvicorn.

Endpoints: ``GET /`` the page; ``GET /api/state`` model, zoo and index; ``POST /api/model`` load
another zoo model; ``POST /api/analyze`` (the raw image bytes as the body) attention, PCA and
neighbours; ``POST /api/similarity`` the map of a clicked patch; ``GET /api/indexed/{n}`` an indexed
image. Every failure answers JSON ``{"error": ...}``, which the page shows; the server keeps running.
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dinofeat.demo import (
    DemoState,
    decode_upload,
    heatmap,
    page_html,
    png_data_url,
    results_json,
    similarity_map,
)
from dinofeat.errors import DinofeatError
from dinofeat.registry import list_models


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(state: DemoState) -> Starlette:
    """The demo's ASGI application around ``state``."""

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html())

    async def current(request: Request) -> Response:
        index = state.index
        return JSONResponse({
            "model": state.model_name, "models": [spec.name for spec in list_models()],
            "index": None if index is None else {"count": len(index), "model": index.model,
                                                 "files": index.files[:24]},
            "index_note": state.index_note()})

    async def switch(request: Request) -> Response:
        try:
            name = str((await request.json())["model"])
            await run_in_threadpool(state.switch, name)
        except (KeyError, ValueError, TypeError, OSError, RuntimeError, DinofeatError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            return _error(f"cannot load the model: {message}")
        return JSONResponse({"model": state.model_name, "index_note": state.index_note()})

    async def analyze_upload(request: Request) -> Response:
        try:
            image = decode_upload(await request.body())
            number, analysis = await run_in_threadpool(state.run, image)
        except (ValueError, RuntimeError, DinofeatError) as error:
            return _error(str(error))
        return JSONResponse(results_json(number, analysis, state))

    async def similarity(request: Request) -> Response:
        try:
            query: dict[str, Any] = await request.json()
            analysis = state.analyses[int(query["id"])]
            values = similarity_map(analysis, float(query["x"]), float(query["y"]))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            return _error(f"no similarity map: {error} (upload the image again)")
        size = Image.fromarray(analysis.picture).size
        return JSONResponse({"similarity": png_data_url(heatmap(values, size))})

    async def indexed(request: Request) -> Response:
        try:
            path = state.index_file(int(request.path_params["number"]))
        except (KeyError, ValueError) as error:
            return _error(str(error), 404)
        return FileResponse(path) if path.is_file() else _error(f"{path} is gone", 404)

    async def indexed_analysis(request: Request) -> Response:
        try:
            path = state.index_file(int(request.path_params["number"]))
            image = decode_upload(path.read_bytes())
            number, analysis = await run_in_threadpool(state.run, image)
        except (KeyError, ValueError, OSError, RuntimeError, DinofeatError) as error:
            return _error(str(error))
        return JSONResponse(results_json(number, analysis, state))

    return Starlette(routes=[
        Route("/", page), Route("/api/state", current), Route("/api/model", switch, methods=["POST"]),
        Route("/api/analyze", analyze_upload, methods=["POST"]),
        Route("/api/similarity", similarity, methods=["POST"]),
        Route("/api/indexed/{number:int}", indexed),
        Route("/api/indexed/{number:int}/analyze", indexed_analysis, methods=["POST"]),
    ])


def serve(model: str, index: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          device: str | None = None) -> None:
    """Load ``model`` (and ``index``) and serve the demo until interrupted."""
    import uvicorn

    state = DemoState(model, index, device)
    print(f"dinofeat demo: http://{host}:{port}/ (model {model}; Ctrl-C stops)", flush=True)
    uvicorn.run(build_app(state), host=host, port=port, log_level="warning")
