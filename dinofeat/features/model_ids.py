"""How a model is named in feature files, indexes and caches, so that features of one model are never
mixed with another's."""

from __future__ import annotations

from pathlib import Path

#: Seed of ``--random-init`` models (smoke tests); part of their identity.
RANDOM_INIT_SEED = 0


def model_id(source: str, random_init: bool = False) -> str:
    """The zoo name or the absolute folder path (random-init models carry their seed).

    Example:
        >>> model_id("vit_s16"), model_id("vit_s16", random_init=True)
        ('vit_s16', 'vit_s16:random-init-seed0')
    """
    identity = str(Path(source).resolve()) if Path(source).is_dir() else source
    return f"{identity}:random-init-seed{RANDOM_INIT_SEED}" if random_init else identity
