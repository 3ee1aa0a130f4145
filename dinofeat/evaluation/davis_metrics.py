"""DAVIS-2017 region similarity J and boundary F-measure, as the official DAVIS-2017 toolkit defines them.

- J: intersection over union of the object masks; 1 when both are empty. Void pixels (label 255 in
  the ground truth) are left out.
- F: boundaries of both masks (a pixel differing from its right, lower or lower-right neighbour),
  each dilated by a disk of radius ``ceil(0.008 * image diagonal)`` pixels; precision = share of the
  predicted boundary within reach of the true one, recall the converse; F their harmonic mean (an
  empty prediction of a non-empty object scores precision 1, recall 0).
- A sequence (semi-supervised protocol): objects are the labels 1 .. max of the first ground-truth
  frame; the first and the last frames are not scored; per object the mean over frames, then the
  mean over objects; J&F = (J + F) / 2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

BOUNDARY_THRESHOLD = 0.008
VOID_LABEL = 255


def region_similarity(
    ground_truth: np.ndarray, prediction: np.ndarray, void: np.ndarray | None = None
) -> float:
    """J of two binary masks (toolkit ``db_eval_iou``)."""
    gt, pred = ground_truth.astype(bool), prediction.astype(bool)
    keep = ~void.astype(bool) if void is not None else np.ones_like(gt)
    union = np.sum((gt | pred) & keep)
    if union == 0:
        return 1.0
    return float(np.sum(gt & pred & keep) / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Toolkit ``_seg2bmap`` at the mask's own size: pixels that differ from a right/lower neighbour."""
    seg = mask.astype(bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return np.asarray(boundary, dtype=bool)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk (``x^2 + y^2 <= r^2``), nothing outside the image."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).float()
    image = torch.from_numpy(mask.astype(np.float32))[None, None]  # sums of <= 4r^2 ones: exact
    return (F.conv2d(image, disk[None, None], padding=radius)[0, 0] > 0.5).numpy()


def boundary_f_measure(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = BOUNDARY_THRESHOLD,
) -> float:
    """F of two binary masks (toolkit ``f_measure``)."""
    keep = ~void.astype(bool) if void is not None else np.ones(ground_truth.shape, dtype=bool)
    radius = int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*ground_truth.shape)))
    pred_boundary = boundary_map(prediction.astype(bool) & keep)
    gt_boundary = boundary_map(ground_truth.astype(bool) & keep)
    n_pred, n_gt = int(pred_boundary.sum()), int(gt_boundary.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision 1 and recall 0, or the converse
    precision = np.sum(pred_boundary & _dilate(gt_boundary, radius)) / n_pred
    recall = np.sum(gt_boundary & _dilate(pred_boundary, radius)) / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def davis_j_and_f(predicted: Any, ground_truth: Any) -> dict[str, Any]:
    """J, F and J&F of one sequence under the DAVIS-2017 semi-supervised protocol.

    Args:
        predicted: (T, H, W) label maps (0 background, 1.. objects).
        ground_truth: (T, H, W) label maps; 255 marks void pixels.

    Returns:
        ``J_mean``, ``F_mean``, ``J&F_mean`` and ``per_object`` {label: {J_per_frame, F_per_frame,
        J_mean, F_mean}} over frames 1 .. T-2.

    Raises:
        ValueError: shapes differ, fewer than three frames, or the prediction has a label beyond the
            objects of the first ground-truth frame (the toolkit refuses that too).
    """
    pred, gt = np.asarray(predicted), np.asarray(ground_truth)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"predicted {pred.shape} and ground truth {gt.shape} must both be (T, H, W)")
    if gt.shape[0] < 3:
        raise ValueError(f"need at least 3 frames (the first and the last are not scored), got {gt.shape[0]}")
    void = gt == VOID_LABEL
    gt = np.where(void, 0, gt)
    num_objects = int(gt[0].max())
    predicted_max = int(pred.max())
    if predicted_max > num_objects:
        raise ValueError(
            f"the prediction has label {predicted_max}, but the first ground-truth frame has "
            f"{num_objects} objects"
        )
    per_object: dict[str, dict[str, Any]] = {}
    for label in range(1, num_objects + 1):
        frames = range(1, gt.shape[0] - 1)
        js = [region_similarity(gt[t] == label, pred[t] == label, void[t]) for t in frames]
        fs = [boundary_f_measure(gt[t] == label, pred[t] == label, void[t]) for t in frames]
        per_object[str(label)] = {
            "J_per_frame": js,
            "F_per_frame": fs,
            "J_mean": float(np.mean(js)),
            "F_mean": float(np.mean(fs)),
        }
    if not per_object:
        raise ValueError("the first ground-truth frame has no object (only label 0)")
    j_mean = float(np.mean([o["J_mean"] for o in per_object.values()]))
    f_mean = float(np.mean([o["F_mean"] for o in per_object.values()]))
    return {"J_mean": j_mean, "F_mean": f_mean, "J&F_mean": (j_mean + f_mean) / 2, "per_object": per_object}
