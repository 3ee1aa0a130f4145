"""Optional dependencies (the package's extras), imported on first use with one clear error when absent.

``pip install dinofeat`` runs the main job (images in, features and attention figures out); video,
TIFF band files, ONNX export, the web demo and YAML configs need an extra each.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dinofeat.utils.errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``purpose`` and the extra to install.

    Example:
        >>> require("json", "none", "this example").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"{purpose} needs {module}, from the [{extra}] extra: "
                                f"pip install 'dinofeat[{extra}]' ({error})") from None
