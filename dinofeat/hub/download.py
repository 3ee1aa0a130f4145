"""Fetching weight files: the Hugging Face Hub (with its cache), official URLs, the installed package.

Every network path honours ``HF_HUB_OFFLINE``: offline and not cached raises
:class:`~dinofeat.utils.errors.OfflineModelError` saying how to pre-download the file.
``HF_ENDPOINT`` and ``HF_HUB_CACHE`` are read when a file is requested, not at import.
"""

from __future__ import annotations

import importlib.resources
import os
from contextlib import AbstractContextManager
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

from dinofeat.registry import ZOO
from dinofeat.utils.errors import GatedModelError, OfflineModelError

_TRUE = {"1", "on", "yes", "true"}

#: Zoo models that load with no network and no cache: those bundled inside the installed package.
OFFLINE_MODELS: tuple[str, ...] = tuple(name for name, spec in ZOO.items() if spec.source.package_path)


def hub_offline() -> bool:
    """Whether downloads are forbidden (``HF_HUB_OFFLINE`` now, or when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(hf_constants.HF_HUB_OFFLINE)


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def _offline_error(what: str, how: str) -> OfflineModelError:
    bundled = ", ".join(OFFLINE_MODELS) if OFFLINE_MODELS else "none in this version"
    return OfflineModelError(
        f"{what} is not cached and HF_HUB_OFFLINE=1 forbids downloading it. To use it offline, "
        f"pre-download it on a machine with network access ({how}, or run dinofeat.load(...) once online, "
        f"with the same HF_HUB_CACHE), or unset HF_HUB_OFFLINE to let dinofeat download it. "
        f"Models that work with no network at all: {bundled}."
    )


def _gated_error(repo_id: str, error: GatedRepoError) -> GatedModelError:
    status = error.response.status_code if error.response is not None else None
    why = {401: "no Hugging Face token was sent",
           403: "the token sent has no access to it yet"}.get(status or 0, f"HTTP {status}")
    return GatedModelError(
        f"Hub repository {repo_id} is gated and refused the download ({why}). Accept its licence (for "
        f"DINOv3: the DINOv3 License) while logged in at https://huggingface.co/{repo_id}, wait for access "
        "to be granted, then log in on this machine with `hf auth login` or set HF_TOKEN to a token of "
        "that account."
    )


def hf_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Local path of ``filename`` from Hub repository ``repo_id`` at ``revision``, downloading if needed.

    Args:
        repo_id: ``"org/name"``.
        filename: File inside the repository.
        revision: Branch, tag or commit hash; ``None`` means ``main``.

    Returns:
        The path inside the Hugging Face cache.

    Raises:
        OfflineModelError: offline (``HF_HUB_OFFLINE``) and the file is not in the cache.
        GatedModelError: the repository is gated and no token, or a token without access, was sent.

    Example:
        >>> hf_file("timm/vit_small_patch16_224.dino", "model.safetensors")  # doctest: +SKIP
        PosixPath('.../snapshots/.../model.safetensors')
    """
    offline = hub_offline()
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=_cache_dir(),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            local_files_only=offline,
        )
    except GatedRepoError as error:
        raise _gated_error(repo_id, error) from None
    except LocalEntryNotFoundError:
        if not offline:
            raise
        rev = f" --revision {revision}" if revision else ""
        raise _offline_error(
            f"{filename} of Hub repository {repo_id}{f'@{revision}' if revision else ''}",
            f"`hf download {repo_id} {filename}{rev}`, formerly `huggingface-cli download`",
        ) from None
    return Path(path)


def url_file(url: str) -> Path:
    """Local path of an official weights URL, downloaded into torch.hub's cache (``<hub dir>/checkpoints``).

    Raises:
        OfflineModelError: offline and the file is not in torch.hub's cache.
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if hub_offline():
        raise _offline_error(f"{url}", f"download it to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=True)
    return target


def package_folder(package_path: str) -> AbstractContextManager[Path]:
    """A context manager giving a real folder for ``package_path`` inside the installed dinofeat package.

    Example:
        >>> with package_folder("models") as folder:  # doctest: +SKIP
        ...     folder.is_dir()
        True
    """
    resource = importlib.resources.files("dinofeat").joinpath(package_path)
    if not resource.is_dir():
        raise FileNotFoundError(
            f"bundled model folder {package_path!r} is not in the installed dinofeat package")
    return importlib.resources.as_file(resource)
