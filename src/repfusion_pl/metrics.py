"""torchmetrics metrics that the libraries lack."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class NormalizedMeanError(Metric):
    """NME: per image, the mean keypoint distance divided by a reference distance, averaged.

    For faces the reference is the inter-ocular distance (outer eye corners; WFLW points 60 and 72).

    Args:
        normalisation_index: The two keypoints whose ground-truth distance normalises the error.
    """

    higher_is_better = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, normalisation_index: tuple[int, int], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.normalisation_index = tuple(normalisation_index)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate ``(N, K, 2)`` predicted and true keypoints."""
        if preds.shape != target.shape or preds.dim() != 3 or preds.shape[-1] != 2:
            raise ValueError(
                f"NME expects (N, K, 2) keypoints, got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        a, b = self.normalisation_index
        reference = (target[:, a] - target[:, b]).norm(dim=-1)
        if (reference <= 0).any():
            raise ValueError(
                f"keypoints {a} and {b} coincide in a ground truth: cannot normalise by their distance"
            )
        errors = (preds - target).norm(dim=-1).mean(dim=1) / reference
        self.total += errors.double().sum()
        self.count += errors.numel()

    def compute(self) -> Tensor:
        """The mean NME over all images seen."""
        return (self.total / self.count).float()
