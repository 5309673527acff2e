"""Procedural shapes: a seeded, in-memory segmentation and landmark task that needs no download.

Every RGB image holds exactly one circle, one square and one triangle on a plain background, each in
its own quadrant (three of the four, chosen at random), with random size, position and colour, plus
a little noise. Targets are a 4-class mask (background, circle, square, triangle) or 5 keypoints
with a fixed meaning, in pixel-centre coordinates (``x = j`` is the centre of column ``j``):

0. circle centre, 1. square centre, 2. triangle centroid,
3. square top-left corner, 4. square top-right corner (centres of those corner pixels).

Mirroring swaps the two square corners, so ``flip_index`` is non-trivial; their distance (the
square's side) normalises keypoint errors, the way the outer eye corners do for faces. The
triangle points up, so every shape class is mirror-symmetric and masks flip without relabelling.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.transforms import (
    DenseAugmentation,
    HorizontalFlipWithLandmarkSwap,
    JointDataset,
    TargetKind,
    build_pipeline,
)

CLASS_NAMES = ("background", "circle", "square", "triangle")
KEYPOINT_NAMES = (
    "circle_centre",
    "square_centre",
    "triangle_centroid",
    "square_top_left",
    "square_top_right",
)
MIN_IMAGE_SIZE = 16


def _uniform(generator: torch.Generator, count: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _quadrant_origins(count: int, cell: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Top-left corners ``(N, 3)`` x and y of three distinct quadrants per image, one per shape."""
    quadrants = torch.rand(count, 4, generator=generator).argsort(dim=1)[:, :3]
    return (quadrants % 2 * cell).float(), (quadrants // 2 * cell).float()


def _circles(ox: Tensor, oy: Tensor, cell: int, xs: Tensor, ys: Tensor, gen: torch.Generator):
    """Circle pixels ``(N, S, S)`` and centres ``(N, 2)``, each circle inside its quadrant."""
    radius = cell * _uniform(gen, len(ox), 0.22, 0.42)
    cx = ox + radius + torch.rand(len(ox), generator=gen) * (cell - 2 * radius)
    cy = oy + radius + torch.rand(len(ox), generator=gen) * (cell - 2 * radius)
    inside = (xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2 <= radius[:, None, None] ** 2
    return inside, torch.stack([cx, cy], dim=1)


def _squares(ox: Tensor, oy: Tensor, cell: int, xs: Tensor, ys: Tensor, gen: torch.Generator):
    """Axis-aligned, pixel-aligned square pixels ``(N, S, S)`` and keypoints ``(N, 3, 2)``.

    Keypoints (continuous): the centre, then the centres of the top-left and top-right pixels.
    """
    side = (cell * _uniform(gen, len(ox), 0.45, 0.9)).round().clamp(min=3)
    x0 = ox + (torch.rand(len(ox), generator=gen) * (cell - side + 1)).floor()
    y0 = oy + (torch.rand(len(ox), generator=gen) * (cell - side + 1)).floor()
    # Pixel centres j + 0.5 inside [x0, x0 + side) select columns x0 .. x0 + side - 1.
    x_in = (xs > x0[:, None, None]) & (xs < (x0 + side)[:, None, None])
    y_in = (ys > y0[:, None, None]) & (ys < (y0 + side)[:, None, None])
    centre = torch.stack([x0 + side / 2, y0 + side / 2], dim=1)
    top_left = torch.stack([x0 + 0.5, y0 + 0.5], dim=1)
    top_right = torch.stack([x0 + side - 0.5, y0 + 0.5], dim=1)
    return x_in & y_in, torch.stack([centre, top_left, top_right], dim=1)


def _triangles(ox: Tensor, oy: Tensor, cell: int, xs: Tensor, ys: Tensor, gen: torch.Generator):
    """Upright equilateral triangle pixels ``(N, S, S)`` and centroids ``(N, 2)``."""
    width = cell * _uniform(gen, len(ox), 0.5, 0.9)
    height = width * math.sqrt(3) / 2
    cx = ox + width / 2 + torch.rand(len(ox), generator=gen) * (cell - width)
    top = oy + torch.rand(len(ox), generator=gen) * (cell - height)
    cx, top, width, height = (t[:, None, None] for t in (cx, top, width, height))
    depth = ys - top  # distance below the apex; the half-width grows linearly with it
    inside = (depth >= 0) & (depth <= height) & ((xs - cx).abs() <= depth / height * width / 2)
    centroid = torch.stack([cx.flatten(), (top + 2 * height / 3).flatten()], dim=1)
    return inside, centroid


def generate_shapes(count: int, image_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``count`` shape images.

    Args:
        count: Number of images N.
        image_size: Side S of the square images (at least 16).
        generator: Source of all randomness, for reproducible data.

    Returns:
        Images ``(N, 3, S, S)`` float in [0, 1], masks ``(N, S, S)`` uint8 with the ids of
        `CLASS_NAMES`, and keypoints ``(N, 5, 2)`` float ``(x, y)`` as in `KEYPOINT_NAMES`.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    cell = image_size // 2
    # Shapes are drawn in continuous coordinates, testing the centre j + 0.5 of every pixel.
    centres = torch.arange(image_size, dtype=torch.float32) + 0.5
    xs, ys = centres.view(1, 1, -1), centres.view(1, -1, 1)
    ox, oy = _quadrant_origins(count, cell, generator)
    circle, circle_kp = _circles(ox[:, 0], oy[:, 0], cell, xs, ys, generator)
    square, square_kp = _squares(ox[:, 1], oy[:, 1], cell, xs, ys, generator)
    triangle, triangle_kp = _triangles(ox[:, 2], oy[:, 2], cell, xs, ys, generator)

    # Dark backgrounds and bright shapes keep every shape visible whatever colours are drawn.
    images = (0.35 * torch.rand(count, 3, 1, 1, generator=generator)).expand(-1, -1, image_size, image_size)
    masks = torch.zeros(count, image_size, image_size, dtype=torch.uint8)
    colours = 0.45 + 0.55 * torch.rand(count, 3, 3, 1, 1, generator=generator)
    for class_id, inside in enumerate((circle, square, triangle), start=1):
        images = torch.where(inside[:, None], colours[:, class_id - 1], images)
        masks[inside] = class_id
    images = (images + 0.03 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    keypoints = torch.stack(
        [circle_kp, square_kp[:, 0], triangle_kp, square_kp[:, 1], square_kp[:, 2]], dim=1
    )
    return images, masks, keypoints - 0.5  # continuous to pixel-centre coordinates


class TensorJointDataset(JointDataset):
    """In-memory images with per-sample masks or keypoints, passed through a joint pipeline."""

    def __init__(self, images: Tensor, targets: Tensor, kind: TargetKind, transform=None) -> None:
        super().__init__(kind, transform)
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]


class ShapesDataModule(BaseDataModule):
    """Seeded procedural shapes for segmentation (4 classes) or landmarks (5 keypoints).

    Batches are ``(images, target)``: images ``(N, 3, S, S)`` in [0, 1]; ``target`` is a long mask
    ``(N, S, S)`` or float keypoints ``(N, 5, 2)``. Training samples get a small random affine and a
    horizontal flip (keypoints swapped by ``flip_index``) when ``augment`` is on.

    Args:
        target: ``"mask"`` for segmentation batches, ``"keypoints"`` for landmark batches.
        image_size: Side S of the images (at least 16).
        num_train: Training images.
        num_val: Validation images.
        num_test: Test images.
        batch_size: Batch size for every split.
        seed: Seed of the generated images; the same seed gives the same data.
        augment: Random affine and flip on training samples.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
        augmentation: The random geometry and colour of training samples (`DenseAugmentation`;
            default: a small affine and the swapping flip).
    """

    num_classes = len(CLASS_NAMES)
    num_keypoints = len(KEYPOINT_NAMES)
    #: Mirror partner of every keypoint: the square's top corners swap.
    flip_index = [0, 1, 2, 4, 3]
    #: Keypoints whose distance normalises errors (NME): the square's top corners.
    normalisation_index = (3, 4)
    in_channels = 3

    def __init__(
        self,
        target: Literal["mask", "keypoints"] = "mask",
        image_size: int = 32,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        batch_size: int = 32,
        seed: int = 0,
        augment: bool = True,
        num_workers: int = 0,
        augmentation: DenseAugmentation | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if target not in ("mask", "keypoints"):
            raise ValueError(f"target must be 'mask' or 'keypoints', got {target!r}")
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
        if num_train < 1 or num_val < 0 or num_test < 0:
            raise ValueError("num_train must be positive and num_val, num_test non-negative")
        self.save_hyperparameters()
        self.augmentation = augmentation or DenseAugmentation()
        self.target: TargetKind = target
        self.image_size, self.seed, self.augment = image_size, seed, augment
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        generator = torch.Generator().manual_seed(self.seed)
        images, masks, keypoints = generate_shapes(sum(self.sizes.values()), self.image_size, generator)
        targets = masks if self.target == "mask" else keypoints
        train = build_pipeline(
            self.augment, HorizontalFlipWithLandmarkSwap(self.flip_index), self.augmentation, self.image_size
        )
        start = 0
        for split, size in self.sizes.items():
            part = slice(start, start + size)
            transform = train if split == "train" else None
            self.splits[split] = TensorJointDataset(images[part], targets[part], self.target, transform)
            start += size
