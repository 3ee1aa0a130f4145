"""Rank-0 metrics: JSON-lines file plus a human-readable progress line through ``logging``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

_log = logging.getLogger("dinofeat.training")


class MetricsWriter:
    """Append one JSON object per line to ``<output_dir>/metrics.jsonl`` (rank 0 only).

    Example:
        >>> import tempfile
        >>> writer = MetricsWriter(tempfile.mkdtemp(), enabled=True)
        >>> writer.write({"loss": 1.0})
    """

    def __init__(self, output_dir: str | Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def progress(self, record: dict[str, Any]) -> None:
        """Log a one-line summary of an iteration record."""
        if not self.enabled:
            return
        guard = ""
        if "teacher_entropy" in record:
            guard = (f" | H {record['teacher_entropy']:.2f} KL {record['kl_teacher_student']:.2f} "
                     f"dims {record['effective_dims']:.0f} |c| {record['center_norm']:.2f}")
        if "ibot_loss" in record:  # DINOv2: the terms as the official code reports them
            guard = (f" | dino {record['dino_local_crops_loss'] + record['dino_global_crops_loss']:.3f} "
                     f"ibot {record['ibot_loss']:.3f} koleo {record['koleo_loss']:.3f}{guard}")
            if "patch_teacher_entropy" in record:
                guard += f" patch H {record['patch_teacher_entropy']:.2f}"
        if "collapse_warning" in record:
            guard += " | COLLAPSE WARNING (see above)"
        _log.info(
            "epoch %d it %d/%d | loss %.4f | lr %.3g | wd %.3g | mom %.5f | T %.4f | %.1f img/s | data %.3fs"
            "%s",
            record["epoch"], record["iter_in_epoch"] + 1, record["iters_per_epoch"], record["loss"],
            record["lr"], record["wd"], record["momentum"], record["teacher_temp"], record["images_per_s"],
            record["data_time"], guard,
        )


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records :class:`MetricsWriter` appended to ``<output_dir>/metrics.jsonl``, in order."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
