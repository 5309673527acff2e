"""Feature losses between projected student maps and teacher maps, each a small ``nn.Module``.

Every loss takes ``(student, teacher)`` feature maps of shape ``(N, C, h, w)`` with equal ``C`` (the
projector sees to that) and returns ``weight * value``. Dense losses resize the student map
bilinearly to the teacher's spatial size first, as the authors did for CelebA-HQ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def global_pool(features: Tensor) -> Tensor:
    """``(N, C, h, w) -> (N, C)`` by spatial mean; already-flat inputs pass through."""
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features


def resize_to(student: Tensor, teacher: Tensor) -> Tensor:
    """Bilinearly resize ``student`` to the teacher's spatial size (no-op when equal)."""
    if student.shape[2:] == teacher.shape[2:]:
        return student
    return F.interpolate(student, size=teacher.shape[2:], mode="bilinear", align_corners=False)


class FeatureLoss(nn.Module):
    """Base class for a weighted distance between student and teacher features.

    Args:
        weight: Multiplier applied to the loss value.
    """

    #: Whether the loss compares maps position by position (so spatial sizes must be matchable).
    dense: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Weighted loss; computed in float32 whatever the autocast precision."""
        if student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"{type(self).__name__}: student features {tuple(student.shape)} and teacher features "
                f"{tuple(teacher.shape)} differ in batch or channels; the projector must map one onto "
                "the other"
            )
        return self.weight * self.compute(student.float(), teacher.float())

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The unweighted loss."""
        raise NotImplementedError


class PooledMSELoss(FeatureLoss):
    """MSE between globally average-pooled features (the paper's classification recipe)."""

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        return F.mse_loss(global_pool(student), global_pool(teacher))


class DenseMSELoss(FeatureLoss):
    """MSE between maps after resizing the student to the teacher's size (paper: dense tasks, R18)."""

    dense = True

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        return F.mse_loss(resize_to(student, teacher), teacher)


class DenseL1Loss(FeatureLoss):
    """L1 between maps after resizing (paper: dense tasks with ResNet-50/HRNet, weight 10)."""

    dense = True

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        return F.l1_loss(resize_to(student, teacher), teacher)


class NormalizedMSELoss(FeatureLoss):
    """MSE between L2-normalised pooled features: matches direction, ignores scale."""

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        return F.mse_loss(F.normalize(global_pool(student), dim=1), F.normalize(global_pool(teacher), dim=1))


class AttentionTransferLoss(FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis): match L2-normalised maps of ``mean_c |f|^p``.

    Args:
        weight: Multiplier (the authors used about 1000).
        p: Exponent of the attention map.
    """

    dense = True

    def __init__(self, weight: float = 1000.0, p: float = 2.0) -> None:
        super().__init__(weight)
        self.p = p

    def attention(self, features: Tensor) -> Tensor:
        """``(N, C, h, w) -> (N, h*w)`` unit-norm spatial attention."""
        return F.normalize(features.abs().pow(self.p).mean(dim=1).flatten(1), dim=1)

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        return (self.attention(resize_to(student, teacher)) - self.attention(teacher)).pow(2).mean()


class RKDLoss(FeatureLoss):
    """Relational KD (Park et al. 2019) on pooled features: pairwise distances and triplet angles.

    Args:
        weight: Multiplier of the whole loss.
        distance_weight: Weight of the distance term.
        angle_weight: Weight of the angle term.
    """

    def __init__(self, weight: float = 1.0, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__(weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    @staticmethod
    def distances(embeddings: Tensor) -> Tensor:
        """Pairwise Euclidean distances divided by their mean over distinct pairs."""
        dist = torch.cdist(embeddings, embeddings)
        off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
        return dist / dist[off_diagonal].mean().clamp_min(1e-12)

    @staticmethod
    def angles(embeddings: Tensor) -> Tensor:
        """Cosines of the angle at every j between (i - j) and (k - j), shape ``(N, N, N)``."""
        diff = F.normalize(embeddings.unsqueeze(0) - embeddings.unsqueeze(1), dim=2)
        return torch.bmm(diff, diff.transpose(1, 2))

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        s, t = global_pool(student), global_pool(teacher)
        distance = F.smooth_l1_loss(self.distances(s), self.distances(t))
        angle = F.smooth_l1_loss(self.angles(s), self.angles(t))
        return self.distance_weight * distance + self.angle_weight * angle


class InfoNCELoss(FeatureLoss):
    """InfoNCE: each student embedding must pick its own image's teacher embedding from the batch.

    Args:
        weight: Multiplier.
        temperature: Softmax temperature on cosine similarities.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__(weight)
        self.temperature = temperature

    def compute(self, student: Tensor, teacher: Tensor) -> Tensor:
        s = F.normalize(global_pool(student), dim=1)
        t = F.normalize(global_pool(teacher), dim=1)
        logits = s @ t.T / self.temperature
        return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
