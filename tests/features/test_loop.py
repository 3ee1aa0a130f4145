"""The one batch loop: device and dtype of what the forward sees, rows passed through, autograd off only
while the loop runs."""

from __future__ import annotations

import torch

from dinofeat.features.loop import run_batches


def test_batches_reach_the_forward_in_the_models_dtype_with_their_rows() -> None:
    seen: list[tuple[torch.dtype, bool]] = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        seen.append((images.dtype, torch.is_inference_mode_enabled()))
        return images.sum(dim=(1, 2, 3))

    batches = [(torch.ones(2, 3, 4, 4), range(0, 2)), (torch.ones(1, 3, 4, 4), range(2, 3))]
    results = []
    for sums, rows in run_batches(batches, forward, torch.device("cpu"), torch.bfloat16):
        # The caller's code between batches is not in inference mode.
        results.append((sums.tolist(), rows, torch.is_inference_mode_enabled()))
    assert seen == [(torch.bfloat16, True), (torch.bfloat16, True)]
    assert results == [([48.0, 48.0], range(0, 2), False), ([48.0], range(2, 3), False)]
