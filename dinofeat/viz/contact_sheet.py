"""A PNG contact sheet of search results: one row per query, the query first, then its hits."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from dinofeat.data.files import open_image
from dinofeat.search.index import SearchHit
from dinofeat.utils.atomic_write import replace_atomically

THUMB = 128
LABEL_HEIGHT = 16


def _thumbnail(path: str) -> Image.Image:
    image = open_image(path)
    image.thumbnail((THUMB, THUMB))
    tile = Image.new("RGB", (THUMB, THUMB), "white")
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def contact_sheet(queries: Sequence[str], hits: Sequence[Sequence[SearchHit]], output: str | os.PathLike[str]
                  ) -> Path:
    """Write the sheet to ``output`` (PNG, atomically) and return its path.

    Example:
        >>> contact_sheet(["q.jpg"], index.search(descriptors, top=5), "sheet.png")  # doctest: +SKIP
    """
    columns = 1 + max((len(row) for row in hits), default=0)
    sheet = Image.new("RGB", (columns * THUMB, len(queries) * (THUMB + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (query, found) in enumerate(zip(queries, hits, strict=True)):
        top = row * (THUMB + LABEL_HEIGHT)
        sheet.paste(_thumbnail(query), (0, top))
        draw.text((2, top + THUMB + 2), "query", fill="black")
        for column, hit in enumerate(found, start=1):
            sheet.paste(_thumbnail(hit.path), (column * THUMB, top))
            draw.text((column * THUMB + 2, top + THUMB + 2), f"{column}: {hit.score:.3f}", fill="black")
    return replace_atomically(lambda temporary: sheet.save(temporary, format="PNG"), output)
