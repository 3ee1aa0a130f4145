"""The demo's HTTP API on 127.0.0.1 (ephemeral port, bundled model): analyses, clicks, index
neighbours, model loading, and the refusals the page shows while the server keeps running."""

from __future__ import annotations

import base64
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the demo needs the [demo] extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the demo needs the [demo] extra (starlette, uvicorn)")

from huggingface_hub import constants as hf_constants
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.demo import DemoServer, DemoSettings, create_app
from dinofeat.demo.models import ModelSlot
from dinofeat.demo.uploads import UploadError, decode_upload
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.utils.errors import OfflineModelError
from tests.helpers.common import REPO_ROOT, TINY_VIT
from tests.helpers.demo import call, png_claiming, post_json, upload, wait_for_model

SAMPLES = REPO_ROOT / "examples" / "images"


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "samples.index"
    assert main(["index", str(SAMPLES), "-o", str(folder), "--model", BUNDLED_MODEL, "--no-progress",
                 "--workers", "0"]) == 0
    return folder


@pytest.fixture(scope="module")
def server(index_dir: Path):
    app = create_app(DemoSettings(index=index_dir, samples=SAMPLES, device="cpu"))
    with DemoServer(app, port=0) as running:
        yield running.url


def test_binds_loopback_on_an_ephemeral_port(server: str) -> None:
    assert server.startswith("http://127.0.0.1:") and not server.endswith(":0")
    status, state = call(f"{server}/api/state")
    assert status == 200
    assert state["samples"] == ["astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"]
    assert state["models"][0] == BUNDLED_MODEL and "vit_s16" in state["models"]
    assert state["status"]["state"] == "ready" and state["index"] is True


def test_page_and_script_are_served(server: str) -> None:
    import urllib.request

    page = urllib.request.urlopen(f"{server}/", timeout=30).read().decode()
    assert 'id="picture"' in page and "/static/demo.js" in page
    script = urllib.request.urlopen(f"{server}/static/demo.js", timeout=30).read().decode()
    assert "/api/similarity" in script


def test_sample_analysis_and_click(server: str) -> None:
    status, result = call(f"{server}/api/analyse?sample=cat.jpg", b"")
    assert status == 200, result
    width, height = Image.open(SAMPLES / "cat.jpg").size
    assert result["original_size"] == [width, height] and result["model"] == BUNDLED_MODEL
    rows, cols = result["grid"]
    picture, pca, attention = (pixels(result[k]) for k in ("picture", "pca", "attention"))
    assert picture.shape == pca.shape == (rows * 16, cols * 16, 3)
    assert attention.shape[1] > picture.shape[1]  # picture, 3 heads, mean, masks side by side
    assert len(np.unique(pca.reshape(-1, 3), axis=0)) > 10  # a coloured PCA, not a flat fill
    # A click in the bottom-right corner lands in the last patch; the map differs from the PCA.
    status, clicked = post_json(f"{server}/api/similarity",
                                {"image_id": result["image_id"], "x": width - 1, "y": height - 1})
    assert status == 200 and clicked["patch"] == [rows - 1, cols - 1]
    similarity = pixels(clicked["similarity"])
    assert similarity.shape == picture.shape and not np.array_equal(similarity, pca)
    _, other = post_json(f"{server}/api/similarity", {"image_id": result["image_id"], "x": 0, "y": 0})
    assert other["patch"] == [0, 0] and not np.array_equal(pixels(other["similarity"]), similarity)


def test_neighbours_of_an_indexed_sample_start_with_itself(server: str) -> None:
    _, result = call(f"{server}/api/analyse?sample=coffee.jpg", b"")
    hits = result["neighbours"]["hits"]
    assert [h["name"] for h in hits][:1] == ["coffee.jpg"] and len(hits) == 4
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    import urllib.request

    thumb = urllib.request.urlopen(f"{server}/api/neighbour/{hits[1]['position']}", timeout=30).read()
    assert max(Image.open(io.BytesIO(thumb)).size) == 160
    assert call(f"{server}/api/neighbour/99")[0] == 404


def test_upload_of_a_photo(server: str) -> None:
    status, result = upload(server, (SAMPLES / "rocket.jpg").read_bytes(), "rocket.jpg")
    assert status == 200 and result["name"] == "rocket.jpg" and result["attention"]


@pytest.mark.parametrize(("data", "expected"), [
    (b"hello, not a picture", "notes.txt is not an image"),
    (b"", "notes.txt is empty"),
    (png_claiming(100_000, 100_000), "decompression bomb"),
    (png_claiming(10_000, 6_000), "10000x6000 pixels"),
])
def test_bad_uploads_are_named_errors_and_the_server_survives(server: str, data: bytes, expected: str
                                                              ) -> None:
    status, body = upload(server, data, "notes.txt")
    assert status == 400 and expected in body["error"]
    assert call(f"{server}/api/state")[0] == 200


def test_truncated_jpeg_is_refused() -> None:
    data = (SAMPLES / "cat.jpg").read_bytes()
    with pytest.raises(UploadError, match=r"cut\.jpg cannot be decoded"):
        decode_upload(data[: len(data) // 2], "cut.jpg")


def test_bad_requests(server: str) -> None:
    escape = call(f"{server}/api/analyse?sample=../../etc/passwd", b"")
    assert escape[0] == 404 and escape[1]["error"].startswith("no sample photo")
    status, body = post_json(f"{server}/api/similarity", {"image_id": "gone", "x": 1, "y": 1})
    assert status == 404 and "pick it again" in body["error"]
    _, result = call(f"{server}/api/analyse?sample=cat.jpg", b"")
    status, body = post_json(f"{server}/api/similarity", {"image_id": result["image_id"], "x": 5000, "y": 1})
    assert status == 400 and "outside cat.jpg" in body["error"]
    assert "image_id" in post_json(f"{server}/api/similarity", {"x": 1})[1]["error"]
    assert call(f"{server}/api/model", b"{", {"Content-Type": "application/json"})[1]["error"] == \
        "the request body is not JSON"


def test_unknown_model_is_an_error_in_the_status(server: str) -> None:
    status, body = post_json(f"{server}/api/model", {"name": "vit_s17"})
    assert status == 200 and body["state"] == "error" and "vit_s17" in body["message"]
    assert body["active"] == BUNDLED_MODEL


def test_offline_zoo_model_fails_in_the_page_not_the_server(server: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            raise OSError(f"network disabled by the test ({address})")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    post_json(f"{server}/api/model", {"name": "vit_s16"})
    status = wait_for_model(server)
    assert status["state"] == "error" and "OfflineModelError" in status["message"]
    assert status["active"] == BUNDLED_MODEL
    assert call(f"{server}/api/analyse?sample=cat.jpg", b"")[1]["model"] == BUNDLED_MODEL


def test_a_model_loads_in_the_background_with_progress_then_answers() -> None:
    release = threading.Event()

    def loader(name: str) -> dinofeat.FeatureExtractor:
        if name != "first":
            assert release.wait(30)
        if name == "resnet50":
            raise OfflineModelError("resnet50 is not cached")
        return dinofeat.load({**TINY_VIT, "depth": 1 if name == "first" else 2}, device="cpu")

    app = create_app(DemoSettings(model="first", samples=SAMPLES), loader=loader)
    with DemoServer(app, port=0) as running:
        base = running.url
        _, before = call(f"{base}/api/analyse?sample=cat.jpg", b"")
        _, asked = post_json(f"{base}/api/model", {"name": "vit_s16"})
        assert asked["state"] == "loading" and asked["message"].startswith("loading vit_s16")
        _, other = post_json(f"{base}/api/model", {"name": "vit_b16"})
        assert "still loading vit_s16" in other["message"]
        # The old model answers meanwhile.
        assert call(f"{base}/api/analyse?image_id={before['image_id']}", b"")[1]["model"] == "first"
        release.set()
        assert wait_for_model(base) == {"active": "vit_s16", "state": "ready", "requested": "vit_s16",
                                        "message": "vit_s16 ready"}
        _, after = call(f"{base}/api/analyse?image_id={before['image_id']}", b"")
        assert after["model"] == "vit_s16" and after["pca"] != before["pca"]
        post_json(f"{base}/api/model", {"name": "resnet50"})
        failed = wait_for_model(base)
        assert failed["state"] == "error" and "resnet50 is not cached" in failed["message"]
        assert failed["active"] == "vit_s16"
        assert post_json(f"{base}/api/model", {"name": "first"})[1]["state"] == "ready"


def test_model_slot_offers_the_start_model_first() -> None:
    slot = ModelSlot("mine", lambda name: dinofeat.load(TINY_VIT, device="cpu"))
    assert slot.choices()[0] == "mine" and slot.active()[0] == "mine"


def test_a_cnn_has_pca_and_similarity_but_no_attention() -> None:
    app = create_app(DemoSettings(model="resnet50", samples=SAMPLES),
                     loader=lambda name: dinofeat.load(name, pretrained=False, device="cpu"))
    with DemoServer(app, port=0) as running:
        _, result = call(f"{running.url}/api/analyse?sample=cat.jpg", b"")
        assert result["attention"] is None and "CNN" in result["attention_note"]
        rows, cols = result["grid"]
        assert pixels(result["pca"]).shape == (rows * 32, cols * 32, 3)
        query = {"image_id": result["image_id"], "x": 0, "y": 0}
        _, clicked = post_json(f"{running.url}/api/similarity", query)
        assert clicked["patch"] == [0, 0]


def test_cli_refuses_a_bad_port_and_a_taken_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--port", "70000"]) == 2
    assert "--port must be in [0, 65535], got 70000" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_only_the_last_images_are_kept(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dinofeat.demo.app as demo_app

    monkeypatch.setattr(demo_app, "KEPT_IMAGES", 2)
    ids = [call(f"{server}/api/analyse?sample={name}", b"")[1]["image_id"]
           for name in ("cat.jpg", "rocket.jpg", "coffee.jpg")]
    status, body = post_json(f"{server}/api/similarity", {"image_id": ids[0], "x": 1, "y": 1})
    assert status == 404 and "no longer" in body["error"]
    assert post_json(f"{server}/api/similarity", {"image_id": ids[2], "x": 1, "y": 1})[0] == 200


def test_cli_refuses_a_missing_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--port", "0", "--index", str(tmp_path / "none.index")]) == 2
    assert f"no dinofeat index in {tmp_path / 'none.index'}" in capsys.readouterr().err
