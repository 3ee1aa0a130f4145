"""Optional dependencies: the main job runs without any extra, and a missing extra is one error naming the
``pip install 'dinofeat[extra]'`` to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dinofeat.utils.errors import MissingExtraError
from dinofeat.utils.extras import require
from tests.helpers.common import REPO_ROOT

EXTRA_MODULES = ("av", "tifffile", "onnx", "onnxruntime", "starlette", "uvicorn", "yaml")

# Makes every extra's module unimportable in the process it runs in, as on `pip install dinofeat`
# (a None entry in sys.modules: `import` raises ImportError, `find_spec` answers None).
_BLOCK_EXTRAS = f"""
import sys
sys.modules.update(dict.fromkeys({EXTRA_MODULES!r}))
"""


def test_the_main_job_runs_without_any_extra(tmp_path: Path) -> None:
    script = _BLOCK_EXTRAS + (
        "from dinofeat.cli import main\n"
        f"assert main(['attention', {str(REPO_ROOT / 'examples' / 'images')!r}, '-o', 'a.png']) == 0\n"
        f"assert main(['embed', {str(REPO_ROOT / 'examples' / 'images')!r}, '-o', 'f.npy']) == 0\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "a.png").stat().st_size > 0 and np.load(tmp_path / "f.npy").shape[1] == 192


@pytest.mark.parametrize(("call", "extra"), [
    ("from dinofeat.data.video import video_info; video_info('clip.mp4')", "video"),
    ("from dinofeat.data.bands import read_bands; read_bands('bands.tif', 3)", "bands"),
    ("from dinofeat.export.onnx import export_onnx; export_onnx('vit_t16_d4_imagenette', 'm.onnx')", "onnx"),
    ("from dinofeat.training.config.train_config import load_config_file; load_config_file('run.yaml')",
     "yaml"),
])
def test_a_missing_extra_is_one_error_naming_it(tmp_path: Path, call: str, extra: str) -> None:
    (tmp_path / "bands.tif").write_bytes(b"II*\x00")
    (tmp_path / "run.yaml").write_text("run: {epochs: 1}\n")
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    script = _BLOCK_EXTRAS + (
        "from dinofeat.utils.errors import MissingExtraError\n"
        f"try:\n    {call}\nexcept MissingExtraError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True,
                            text=True)
    assert f"pip install 'dinofeat[{extra}]'" in result.stdout


def test_the_demo_command_names_its_extra(tmp_path: Path) -> None:
    script = _BLOCK_EXTRAS + ("from dinofeat.cli import main\n"
                              "raise SystemExit(main(['demo', '--port', '0']))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'dinofeat[demo]'" in result.stderr and "Traceback" not in result.stderr


def test_require_returns_the_module_or_raises_with_the_extra() -> None:
    assert require("numpy", "none", "arrays") is np
    with pytest.raises(MissingExtraError, match=r"spelling needs no_such_module_x, from the \[spell\] extra"):
        require("no_such_module_x", "spell", "spelling")
