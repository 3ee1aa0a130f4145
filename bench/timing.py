"""Shared by the bench scripts: variants timed interleaved round-robin, and summaries of side-by-side runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds per call of each variant: one warm-up call each, then ``repeats`` rounds, the median."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def side_by_side_summary(official: list[dict[str, Any]], ours: list[dict[str, Any]], rss_key: str
                         ) -> dict[str, Any]:
    """Images/s and peak RSS of alternating runs of an official loop and dinofeat's: the lists of figures,
    the ratio of medians, and the median of per-round ratios (each round's two runs are minutes apart;
    the machine's speed drifts more between rounds)."""
    official_ips = statistics.median(r["official_images_per_s"] for r in official)
    ours_ips = statistics.median(r["images_per_s"] for r in ours)
    official_rss = statistics.median(r["peak_rss_MiB"] for r in official)
    ours_rss = statistics.median(r[rss_key] for r in ours)
    return {
        "rounds": len(official),
        "official_images_per_s": [r["official_images_per_s"] for r in official],
        "dinofeat_images_per_s": [r["images_per_s"] for r in ours],
        "official_peak_rss_MiB": [r["peak_rss_MiB"] for r in official],
        f"dinofeat_{rss_key}": [r[rss_key] for r in ours],
        "ratio_of_median_images_per_s": round(ours_ips / official_ips, 3),
        "median_of_per_round_ratios": round(statistics.median(
            b["images_per_s"] / a["official_images_per_s"] for a, b in zip(official, ours, strict=True)), 3),
        "ratio_of_median_peak_rss": round(ours_rss / official_rss, 3),
    }
