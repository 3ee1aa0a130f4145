from pathlib import Path

import pytest

from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_text_atomically(tmp_path / "out.json", "old")

    def failing(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(failing, target, durable=True)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_temporary_keeps_the_suffix_and_result_is_world_readable(tmp_path: Path) -> None:
    seen: list[str] = []
    def write(temporary: Path) -> None:
        seen.append(temporary.suffix)
        temporary.write_bytes(b"x")

    target = replace_atomically(write, tmp_path / "a" / "f.npy")
    assert seen == [".npy"] and target.read_bytes() == b"x"
    assert target.stat().st_mode & 0o777 == 0o644
