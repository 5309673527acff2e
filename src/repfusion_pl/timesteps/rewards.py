"""What the timestep policy is rewarded with: a component of `PolicyTimestep`, chosen in YAML.

A reward looks at the teacher's features at the timestep drawn for each image and says how good
that timestep was, per image (higher is better). It may train parameters of its own (a task head,
a projection) through the loss terms it returns; those see detached teacher features only.

* `TaskHeadReward` (the paper's, needs labels): minus the cross-entropy of a 3-layer MLP head.
* `LeastSquaresReward` (the authors' variant, needs labels, no parameters): minus each image's
  residual of a ridge fit of the batch's features onto its one-hot labels.
* `ContrastiveReward` (the authors' "common" policy, no labels): minus each image's InfoNCE against
  other images drawn at the same timestep (the authors': the whole batch), each image its own
  class: the timestep at which the images are most distinguishable.

Write your own by subclassing `TimestepReward` and implementing `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class RewardOutput:
    """Per-image rewards (detached, higher is better), loss terms that train the reward, and logs."""

    reward: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    logs: dict[str, Tensor] = field(default_factory=dict)


def pooled(features: Tensor) -> Tensor:
    """``(N, C, h, w)`` maps averaged to ``(N, C)`` vectors (vectors pass through), in float32."""
    return features.float().mean(dim=(2, 3)) if features.dim() == 4 else features.float()


def task_head_loss(head: nn.Module, features: Tensor, labels: Tensor) -> Tensor:
    """Per-image cross-entropy of a task head on globally pooled teacher features."""
    return F.cross_entropy(head(pooled(features)), labels, reduction="none")


def check_labels(labels: Tensor | None, num_classes: int, owner: str, check_range: bool = True) -> Tensor:
    """The labels of a batch, or one clear error when there are none or they exceed ``num_classes``.

    Reading the range waits for the device the labels are on; ``check_range=False`` skips it.
    """
    if labels is None:
        raise ValueError(
            f"{owner} needs labels, but the batch has none (an unlabelled data module). For label-free "
            "distillation choose the reward that needs none: "
            "`reward: {class_path: repfusion_pl.ContrastiveReward}` in PolicyTimestep."
        )
    if check_range and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise ValueError(
            f"label {bad} is outside 0..{num_classes - 1}; set {owner}'s num_classes to the dataset's "
            "class count"
        )
    return labels


class TimestepReward(nn.Module):
    """Base class of rewards: implement `forward`; override `build` to create parameters.

    Attributes:
        needs_labels: Whether `forward` uses the labels (a batch without them is then refused).
        reads_timesteps: Whether `forward` takes the drawn ``timesteps`` too (as a keyword).
    """

    needs_labels: bool = False
    reads_timesteps: bool = False
    _range_checked = False

    def build(self, feature_channels: int) -> None:
        """Create parameters once the teacher's feature width is known (called by `PolicyTimestep`)."""

    def score(self, features: Tensor, labels: Tensor | None, timesteps: Tensor) -> RewardOutput:
        """Score drawn timesteps: ``forward``, given the timesteps when the reward reads them."""
        if self.reads_timesteps:
            return self(features, labels, timesteps=timesteps)
        return self(features, labels)

    def checked_labels(self, labels: Tensor | None, num_classes: int) -> Tensor:
        """A batch's labels, refused with the fix when missing or outside ``0..num_classes - 1``.

        On a CPU every batch's range is read; on an accelerator only the first batch's (a read
        waits for the device, which a GPU step must not do every time), and never while compiling.
        """
        on_host = labels is not None and labels.device.type == "cpu"
        check_range = (on_host or not self._range_checked) and not torch.compiler.is_compiling()
        checked = check_labels(labels, num_classes, type(self).__name__, check_range)
        if check_range and not on_host:  # set only when it changes: a compiled step is not re-traced
            self._range_checked = True
        return checked

    def forward(self, features: Tensor, labels: Tensor | None) -> RewardOutput:
        """Score the drawn timesteps.

        Args:
            features: ``(N, C, h, w)`` detached teacher features at each image's drawn timestep.
            labels: ``(N,)`` class labels, or ``None`` for unlabelled batches.

        Returns:
            `RewardOutput` with ``reward`` of shape ``(N,)``.
        """
        raise NotImplementedError


class TaskHeadReward(TimestepReward):
    """The paper's reward: minus the cross-entropy of a task head (3-layer MLP) on pooled features.

    The head is trained by its own cross-entropy (logged as ``head_ce``).

    Args:
        num_classes: Classes of the labels.
        hidden: Hidden width of the head (the authors: 256 for CIFAR-10, 384 for Tiny-ImageNet).
    """

    needs_labels = True

    def __init__(self, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"TaskHeadReward.num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.hidden = num_classes, hidden
        self.head: nn.Module | None = None

    def build(self, feature_channels: int) -> None:
        self.head = nn.Sequential(
            nn.Linear(feature_channels, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.num_classes),
        )

    def forward(self, features: Tensor, labels: Tensor | None) -> RewardOutput:
        labels = self.checked_labels(labels, self.num_classes)
        assert self.head is not None, "build() first"
        head_ce = task_head_loss(self.head, features, labels)
        return RewardOutput(-head_ce.detach(), losses={"head_ce": head_ce.mean()})


class LeastSquaresReward(TimestepReward):
    """Minus each image's squared residual of a ridge fit of the batch's pooled features on its labels.

    Per batch, ``W = argmin ||[X 1] W - Y||^2 + strength * s * ||W||^2`` (the bias not penalised,
    ``s`` the mean squared feature, so the strength is scale-free); image ``i`` scores
    ``-||y_i - [x_i 1] W||^2``. No parameters. The authors' variant took ``torch.linalg.lstsq``
    residuals, which are per class, not per image, and vanish when the batch is smaller than the
    feature width; the ridge keeps the fit meaningful there.

    Args:
        num_classes: Classes of the labels.
        strength: Ridge strength relative to the mean squared feature (0: plain least squares).
    """

    needs_labels = True

    def __init__(self, num_classes: int, strength: float = 0.1) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"LeastSquaresReward.strength must be >= 0, got {strength}")
        self.num_classes, self.strength = num_classes, strength

    def residuals(self, features: Tensor, labels: Tensor) -> Tensor:
        """Per-image squared residuals ``(N,)`` of the in-batch ridge fit."""
        x = pooled(features).double()
        design = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
        targets = F.one_hot(labels, self.num_classes).double()
        gram = design.T @ design
        penalty = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        penalty[-1, -1] = 0  # the bias
        scale = (x**2).mean().clamp(min=1e-12)
        weights = torch.linalg.lstsq(gram + self.strength * scale * penalty, design.T @ targets).solution
        return ((targets - design @ weights) ** 2).sum(dim=1).float()

    def forward(self, features: Tensor, labels: Tensor | None) -> RewardOutput:
        labels = self.checked_labels(labels, self.num_classes)
        residuals = self.residuals(features, labels)
        return RewardOutput(-residuals.detach(), logs={"lsq_residual": residuals.mean().detach()})


def info_nce(embeddings: Tensor, temperature: float) -> Tensor:
    """Per-image InfoNCE of L2-normalised embeddings against the batch, each image its own class."""
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device), reduction="none")


def same_timestep_info_nce(
    embeddings: Tensor, timesteps: Tensor, negatives: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-image InfoNCE against ``negatives`` other images of the batch drawn at the same timestep.

    Each image takes the next ``negatives`` same-timestep images after it in the batch (cyclically:
    batches are shuffled, and nothing random is drawn). Returns the losses ``(N,)`` and whether each
    image had that many partners.
    """
    n = len(embeddings)
    z = F.normalize(embeddings, dim=1)
    index = torch.arange(n, device=z.device)
    after = (index[None, :] - index[:, None]) % n  # how far image j comes after image i
    partner = (timesteps[:, None] == timesteps[None, :]) & (after > 0)
    distance = torch.where(partner, after, n + after)  # non-partners sort after every partner
    nearest = distance.topk(negatives, dim=1, largest=False)
    valid = nearest.values[:, -1] < n
    similarity = z @ z.T / temperature
    logits = torch.cat([similarity.diagonal()[:, None], similarity.gather(1, nearest.indices)], dim=1)
    return torch.logsumexp(logits, dim=1) - logits[:, 0], valid


class ContrastiveReward(TimestepReward):
    """Label-free: how well the teacher tells images apart at their timestep (the authors' "common" reward).

    The pooled teacher features go through a projection (learned by the InfoNCE of the whole batch,
    logged as ``infonce``; ``projection_dim: null`` keeps the features as they are, as the authors
    did) and are compared by cosine similarity. An image's reward is minus its InfoNCE against
    ``negatives`` other images drawn at the same timestep.

    The authors compared each image with the whole batch. With one timestep per image, that pays
    the policy for disagreeing: an image at a timestep the rest of the batch did not draw is told
    apart by the timestep's signature alone, and scored higher than the same images all at that
    timestep (``docs/policy.md``, measured), so the policy never settles. Against images at its own
    timestep, and always the same number of them, an image gains nothing by standing apart. Images
    with fewer same-timestep partners get the mean reward of the rest (no signal).

    Args:
        projection_dim: Width of a learned linear projection; ``None`` for none.
        temperature: Softmax temperature of the InfoNCE (the authors: 0.1).
        negatives: Same-timestep images each image is compared with; ``None``: the whole batch,
            whatever their timesteps (the authors' reward).
    """

    def __init__(
        self, projection_dim: int | None = 128, temperature: float = 0.1, negatives: int | None = 4
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"ContrastiveReward.temperature must be positive, got {temperature}")
        if negatives is not None and negatives < 1:
            raise ValueError(
                f"ContrastiveReward.negatives must be at least 1 (null: the whole batch), got {negatives}"
            )
        self.projection_dim, self.temperature, self.negatives = projection_dim, temperature, negatives
        self.reads_timesteps = negatives is not None
        self.projection: nn.Module = nn.Identity()

    def build(self, feature_channels: int) -> None:
        if self.projection_dim is not None:
            self.projection = nn.Linear(feature_channels, self.projection_dim)

    def forward(
        self, features: Tensor, labels: Tensor | None, timesteps: Tensor | None = None
    ) -> RewardOutput:
        least = 2 if self.negatives is None else self.negatives + 1
        if len(features) < least:
            raise ValueError(
                f"ContrastiveReward compares images within a batch: use batches of {least} or more "
                "(or lower its negatives)"
            )
        embeddings = self.projection(pooled(features))
        loss = info_nce(embeddings, self.temperature)
        learned = any(True for _ in self.projection.parameters())
        terms = {"infonce": loss.mean()} if learned else {}
        logs = {"infonce_mean": loss.mean().detach()}
        if self.negatives is None:
            return RewardOutput(-loss.detach(), losses=terms, logs=logs)
        # Without timesteps (a batch scored at one t), every image is at the same timestep.
        same_t = timesteps if timesteps is not None else features.new_zeros(len(features))
        scored, valid = same_timestep_info_nce(embeddings.detach(), same_t, self.negatives, self.temperature)
        # Without enough partners an image gets the others' mean: no push either way (read on the device).
        fill = (scored * valid).sum() / valid.sum().clamp(min=1)
        reward = -torch.where(valid, scored, fill)
        return RewardOutput(reward, losses=terms, logs={**logs, "reward_partnered": valid.float().mean()})
