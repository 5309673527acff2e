"""Landmark detection by heatmap regression: backbone, a light deconvolution head, NME."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection

from repfusion_pl.metrics import NormalizedMeanError
from repfusion_pl.optim import LRSchedule
from repfusion_pl.students import BackboneSpec, Student
from repfusion_pl.tasks.base import BaseTask
from repfusion_pl.tasks.heatmap_heads import ConcatHead, deconv_head, upsamplings_for
from repfusion_pl.tasks.protocol import FineTuneProtocol


def gaussian_heatmaps(keypoints: Tensor, size: tuple[int, int], stride: float, sigma: float) -> Tensor:
    """Unnormalised Gaussians (peak 1) at each keypoint, on a heatmap ``stride`` times coarser.

    Pixel centres are used throughout: image pixel x covers [x - 0.5, x + 0.5], so heatmap
    coordinate u maps to image coordinate ``(u + 0.5) * stride - 0.5``.

    Args:
        keypoints: ``(N, K, 2)`` (x, y) image-pixel coordinates.
        size: Heatmap ``(height, width)``.
        stride: Image pixels per heatmap pixel.
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
        ``(N, K, height, width)`` target heatmaps.
    """
    height, width = size
    centres = (keypoints + 0.5) / stride - 0.5
    ys = torch.arange(height, device=keypoints.device, dtype=keypoints.dtype).view(1, 1, height, 1)
    xs = torch.arange(width, device=keypoints.device, dtype=keypoints.dtype).view(1, 1, 1, width)
    dx2 = (xs - centres[..., 0, None, None]) ** 2
    dy2 = (ys - centres[..., 1, None, None]) ** 2
    return torch.exp(-(dx2 + dy2) / (2 * sigma**2))


def decode_heatmaps(heatmaps: Tensor, stride: float) -> Tensor:
    """Sub-pixel keypoints: the arg-max, refined by the vertex of a parabola through the log-heatmap.

    The log of a Gaussian is a quadratic, so the parabola through three neighbouring samples
    recovers a Gaussian's centre exactly (at a border the three samples shift inwards). The result
    is kept within half a pixel of the arg-max, which noisy heatmaps need.

    Args:
        heatmaps: ``(N, K, h, w)``, with h and w at least 3.
        stride: Image pixels per heatmap pixel.

    Returns:
        ``(N, K, 2)`` (x, y) in image-pixel coordinates.
    """
    n, k, h, w = heatmaps.shape
    log = heatmaps.detach().float().reshape(n * k, h, w).clamp(min=1e-10).log()
    index = log.flatten(1).argmax(dim=1)
    peak_y, peak_x = index // w, index % w
    rows = torch.arange(n * k, device=heatmaps.device)

    def vertex(samples: Tensor, centre: Tensor, peak: Tensor) -> Tensor:
        before, middle, after = samples.unbind(-1)
        slope, curvature = (after - before) / 2, after - 2 * middle + before
        offset = torch.where(curvature < 0, -slope / curvature.clamp(max=-1e-6), torch.zeros_like(slope))
        return (centre + offset).clamp(peak - 0.5, peak + 0.5)

    cx, cy = peak_x.clamp(1, w - 2), peak_y.clamp(1, h - 2)
    steps = torch.tensor([-1, 0, 1], device=heatmaps.device)
    along_x = log[rows[:, None], peak_y[:, None], cx[:, None] + steps]
    along_y = log[rows[:, None], cy[:, None] + steps, peak_x[:, None]]
    sub_x = vertex(along_x, cx.float(), peak_x.float())
    sub_y = vertex(along_y, cy.float(), peak_y.float())
    coords = torch.stack([sub_x, sub_y], dim=-1).view(n, k, 2)
    return (coords + 0.5) * stride - 0.5


class LandmarkTask(BaseTask):
    """Top-down landmark detection: heatmaps from a deconvolution head; NME as the metric.

    Args:
        num_keypoints: K (98 for WFLW).
        normalisation_index: The keypoints whose distance normalises NME (WFLW: 60, 72).
        flip_index: Left/right permutation of keypoints, for the flip test.
        flip_test: Average the heatmaps of the image and of its mirror at evaluation.
        image_size: Input side in pixels (to size the head).
        heatmap_stride: Image pixels per heatmap pixel (the paper: 256 px in, 64 px heatmaps = 4).
        head: ``deconv`` (SimpleBaseline deconvolutions on the last stage, for ResNets) or ``concat``
            (HRNet: all branches resized and concatenated, then 1x1 convolutions).
        head_channels: Width of the deconvolution head (the authors' ResNet-50: 256).
        sigma: Target Gaussian standard deviation in heatmap pixels.
        backbone: Architecture, stem and input channels; default the distilled student's. See `BaseTask`.
        backbone_weights: Distillation checkpoint or exported file; see `BaseTask`.
        freeze_backbone: Keep the backbone fixed.
        optimizer: Optimiser factory; default AdamW(lr=1e-3).
        lr_scheduler: Scheduler factory; default none.
        schedule: The scheduler's interval and a linear warm-up; see `BaseTask`.
        protocol: Lower backbone rate, layer-wise decay or LP-FT; see `FineTuneProtocol`.
    """

    def __init__(
        self,
        num_keypoints: int,
        normalisation_index: tuple[int, int],
        flip_index: Sequence[int] | None = None,
        flip_test: bool = False,
        image_size: int = 256,
        heatmap_stride: int = 4,
        head: Literal["deconv", "concat"] = "deconv",
        head_channels: int = 128,
        sigma: float = 1.5,
        backbone: BackboneSpec | None = None,
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: LRSchedule | None = None,
        protocol: FineTuneProtocol | None = None,
    ) -> None:
        if flip_test and flip_index is None:
            raise ValueError("flip_test needs flip_index (the left/right permutation of the keypoints)")
        if flip_index is not None and sorted(flip_index) != list(range(num_keypoints)):
            raise ValueError(f"flip_index must be a permutation of 0..{num_keypoints - 1}")
        self.num_keypoints, self.normalisation_index = num_keypoints, tuple(normalisation_index)
        self.flip_index, self.flip_test = list(flip_index) if flip_index else None, flip_test
        self.image_size, self.heatmap_stride, self.head_channels = image_size, heatmap_stride, head_channels
        self.head_type = head
        self.sigma = sigma
        super().__init__(
            backbone, backbone_weights, freeze_backbone, optimizer, lr_scheduler, schedule, protocol
        )

    def configure_models(self) -> None:
        self.encoder = Student.from_spec(self.backbone_spec)
        tap = self.encoder.taps[-1]
        feature = self.encoder.feature_maps(self.image_size)[tap]
        arch = self.backbone_spec.arch
        if self.head_type == "concat":
            if isinstance(feature, Tensor):
                raise ValueError(
                    f"head: concat joins a multi-branch backbone's maps (timm HRNets), but {arch}'s tap "
                    f"{tap!r} gives one map; use head: deconv"
                )
            self.head: nn.Module = ConcatHead([m.shape[1] for m in feature], self.num_keypoints)
            return
        if not isinstance(feature, Tensor):
            raise ValueError(
                f"{arch}'s tap {tap!r} gives {len(feature)} maps (an HRNet stage): use head: concat"
            )
        stride = self.image_size / feature.shape[-2]
        ups = upsamplings_for(stride, self.heatmap_stride, self.image_size)
        self.head = deconv_head(feature.shape[1], self.num_keypoints, ups, self.head_channels)

    def configure_metrics(self) -> MetricCollection:
        return MetricCollection({"nme": NormalizedMeanError(self.normalisation_index)})  # type: ignore[arg-type]

    def backbone_module(self) -> nn.Module:
        return self.encoder.backbone

    def heatmaps(self, images: Tensor) -> Tensor:
        """``(N, K, H / stride, W / stride)`` heatmaps."""
        return self.head(self.encoder(images)[self.encoder.taps[-1]])

    def forward(self, images: Tensor) -> Tensor:
        """Heatmaps; at evaluation with ``flip_test``, averaged with those of the mirrored image."""
        heatmaps = self.heatmaps(images)
        if self.flip_test and not self.training:
            mirrored = self.heatmaps(images.flip(-1)).flip(-1)[:, self.flip_index]
            heatmaps = (heatmaps + mirrored) / 2
        return heatmaps

    def predictions(self, output: Tensor) -> Tensor:
        return decode_heatmaps(output, self.heatmap_stride)

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        if target.shape[1:] != (self.num_keypoints, 2):
            raise ValueError(f"expected keypoints (N, {self.num_keypoints}, 2), got {tuple(target.shape)}")
        size = (output.shape[-2], output.shape[-1])
        goal = gaussian_heatmaps(target.to(output.dtype), size, self.heatmap_stride, self.sigma)
        return F.mse_loss(output, goal)
