"""The web demo: its computations, its refusals, and the page in a real headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dinofeat
from dinofeat.cli import main
from dinofeat.demo import analyze, decode_upload, display_size, similarity_map
from dinofeat.errors import ImageReadError
from dinofeat.preprocess import to_normalized_tensor
from dinofeat.registry import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_that_are_not_images_or_are_bombs_are_refused():
    assert decode_upload(_png(40, 30)).size == (40, 30)
    with pytest.raises(ImageReadError, match="not an image"):
        decode_upload(b"%PDF-1.4 not an image")
    with pytest.raises(ImageReadError, match="empty"):
        decode_upload(b"")
    bomb = _png(9000, 9000)  # 81 megapixels in a file of a few hundred kB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageReadError, match=r"81 megapixels.*decompression bomb"):
        decode_upload(bomb)


def test_analysis_shapes_and_similarity_of_the_clicked_patch():
    model = dinofeat.load(BUNDLED_MODEL, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 450, 3), dtype=np.uint8))
    assert display_size(450, 300, 16) == (224, 336)
    analysis = analyze(model, image)
    assert analysis.picture.shape == (224, 336, 3) and analysis.pca.shape == (14, 21, 3)
    assert analysis.attention is not None and analysis.attention.shape == (3, 14, 21)
    similarity = similarity_map(analysis, 0.5, 0.25)
    assert similarity.shape == (14, 21) and similarity[3, 10] == pytest.approx(1.0, abs=1e-5)
    assert similarity.max() == pytest.approx(1.0, abs=1e-5)
    batch = to_normalized_tensor(Image.fromarray(analysis.picture), model.preprocess).unsqueeze(0)
    assert torch.allclose(analysis.cls, model.embed(batch)[0], atol=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
def test_the_page_in_headless_chromium(photos, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    index_dir = tmp_path / "index"
    assert main(["index", str(photos), "-o", str(index_dir), "--workers", "0", "--no-progress",
                 "--device", "cpu"]) == 0
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "dinofeat.cli", "demo", "--port", str(port), "--index",
                               str(index_dir), "--device", "cpu"],
                              env={**os.environ, "OMP_NUM_THREADS": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1400"):
        options.add_argument(flag)
    driver = None
    try:
        _wait_for_server(port, server)
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        driver = webdriver.Chrome(service=service, options=options)
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: "ready" in d.find_element(By.ID, "status").text)
        photo = sorted(p for p in photos.iterdir() if p.suffix.lower() in {".jpg", ".png"})[0]
        driver.find_element(By.ID, "upload").send_keys(str(photo))
        wait.until(lambda d: _has_image(d, By.ID, "attention"))
        picture = driver.find_element(By.ID, "picture")
        left_of_centre = -picture.size["width"] // 4
        ActionChains(driver).move_to_element_with_offset(picture, left_of_centre, 0).click().perform()
        wait.until(lambda d: _has_image(d, By.ID, "similarity"))
        sources = [driver.find_element(By.ID, name).get_attribute("src") for name in ("attention", "pca",
                                                                                     "similarity")]
        assert len(set(sources)) == 3 and all(len(src) > 1000 for src in sources)
        neighbours = driver.find_elements(By.CSS_SELECTOR, "#neighbours img")
        assert len(neighbours) == min(6, len(list(photos.iterdir())))
        screenshot = os.environ.get("DINOFEAT_DEMO_SCREENSHOT")
        driver.save_screenshot(screenshot or str(tmp_path / "demo.png"))
        # A file that is not an image: the page says so, the server stays up.
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        driver.find_element(By.ID, "upload").send_keys(str(bad))
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("class") == "error")
        assert "not an image" in driver.find_element(By.ID, "status").text
        # Another zoo model, not cached (the tests run offline): its load error is shown in the page.
        Select(driver.find_element(By.ID, "model")).select_by_value("vit_s16")
        wait.until(lambda d: "cannot load the model" in d.find_element(By.ID, "status").text)
        assert server.poll() is None
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def _has_image(driver, by: str, name: str) -> bool:
    return (driver.find_element(by, name).get_attribute("src") or "").startswith("data:image/png")


def _wait_for_server(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(server.stdout.read() if server.stdout else "server exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the demo server did not start in 90 s")
