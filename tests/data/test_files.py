"""File lists: one image per line, relative paths against the list's own folder, for every command that
reads one (``dinofeat embed --files-from``, ``data.file_list`` of the trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinofeat.data.collections import plan_units
from dinofeat.data.files import read_file_list


def test_relative_paths_resolve_against_the_lists_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = tmp_path / "elsewhere" / "b.jpg"
    listing = lists / "images.txt"
    listing.write_text(f"../photos/a.jpg\n\n  {absolute}  \n")
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert read_file_list(listing) == [lists / "../photos/a.jpg", absolute]
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").touch()
    absolute.parent.mkdir()
    absolute.touch()
    (unit,) = plan_units([], shard_size=10, files_from=listing)
    assert unit.files == (str((tmp_path / "photos" / "a.jpg").resolve()), str(absolute))


def test_missing_or_empty_lists_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_file_list(tmp_path / "none.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(FileNotFoundError, match=f"{empty} names no image"):
        read_file_list(empty)
