"""The demo in a real browser: headless Chromium (Debian's chromium + chromedriver, driven by selenium)
loads the page served on 127.0.0.1, uploads a sample photo, clicks a point, and sees three different
pictures (attention, PCA, similarity); a non-image upload shows its error in the page.

``DINOFEAT_DEMO_SCREENSHOT=docs/demo.png`` also writes the screenshot of the page after the click.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the demo needs the [demo] extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the demo needs the [demo] extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (the dev extra)")

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dinofeat.demo import DemoServer, DemoSettings, create_app
from tests.helpers.common import REPO_ROOT

SAMPLES = REPO_ROOT / "examples" / "images"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,760")
WAIT_SECONDS = 30
SCREENSHOT_BYTES = 300_000


def _browser() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver"
                                              if Path("/usr/lib/chromium/chromedriver").exists() else None)
    if browser is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    f"(found chromium={browser}, chromedriver={driver})")
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    binary, driver_path = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def _shown(driver: Any, element_id: str) -> str:
    """The data URL of an <img> once the browser has decoded it (naturalWidth > 0)."""
    def ready(d: Any) -> Any:
        return d.execute_script(
            "const e = document.getElementById(arguments[0]);"
            "return e.src.startsWith('data:image/png') && e.complete && e.naturalWidth > 0 ? e.src : null;",
            element_id)

    src: str = WebDriverWait(driver, WAIT_SECONDS).until(ready, f"#{element_id} never appeared")
    return src


def _pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def _save_screenshot(driver: Any, path: Path) -> None:
    """The page as PNG, reduced to a palette so that it stays under SCREENSHOT_BYTES."""
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    for colours in (256, 128, 64):
        buffer = io.BytesIO()
        shot.quantize(colours, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < SCREENSHOT_BYTES:
            break
    path.write_bytes(buffer.getvalue())


def test_upload_click_and_three_different_pictures(browser: Any, tmp_path: Path) -> None:
    app = create_app(DemoSettings(samples=SAMPLES, device="cpu"))
    with DemoServer(app, port=0) as server:
        browser.get(server.url)
        WebDriverWait(browser, WAIT_SECONDS).until(
            lambda d: d.execute_script("return document.body.dataset.ready === '1'"),
            "the page never started")
        browser.find_element(By.ID, "upload").send_keys(str(SAMPLES / "cat.jpg"))
        attention, pca = _shown(browser, "attention"), _shown(browser, "pca")
        picture = browser.find_element(By.ID, "picture")
        # Selenium offsets are from the element's centre: click a little right of it, on the cat.
        clicker = ActionChains(browser).move_to_element_with_offset(picture, picture.size["width"] // 8, 0)
        clicker.click().perform()
        similarity = _shown(browser, "similarity")
        caption = browser.find_element(By.ID, "similarity-caption").text
        assert caption.startswith("Similarity to the patch at"), caption
        assert browser.find_element(By.ID, "error").is_displayed() is False
        images = {name: _pixels(url) for name, url in
                  (("attention", attention), ("pca", pca), ("similarity", similarity))}
        assert _differ(images["attention"], images["pca"])
        assert _differ(images["attention"], images["similarity"])
        assert _differ(images["pca"], images["similarity"])
        for name, pixels in images.items():
            assert pixels.std() > 5, f"{name} is a flat picture"
        screenshot = os.environ.get("DINOFEAT_DEMO_SCREENSHOT")
        if screenshot:
            _save_screenshot(browser, Path(screenshot))

        not_image = tmp_path / "notes.txt"
        not_image.write_text("not a picture")
        browser.find_element(By.ID, "upload").send_keys(str(not_image))
        error = WebDriverWait(browser, WAIT_SECONDS).until(
            lambda d: d.find_element(By.ID, "error").text or None, "the upload error never showed")
        assert "notes.txt is not an image" in error
