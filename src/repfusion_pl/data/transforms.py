"""Joint augmentation of an image with its class mask or its keypoints (torchvision ``transforms.v2``).

A sample travels through a pipeline as ``(tv_tensors.Image, tv_tensors.Mask | tv_tensors.KeyPoints)``,
so every v2 geometric transform moves the target with the image: masks are resampled with nearest
neighbours and keypoints are mapped by the same geometry.

Keypoint conventions. Batches and ``JointDataset.load`` use pixel-centre coordinates: ``x = j`` is
the centre of column ``j`` (the convention of landmark annotations and of the landmark task's
heatmaps). Inside pipelines, `tv_tensors.KeyPoints` are continuous coordinates, where column ``j``
covers ``[j, j + 1)``: the convention in which torchvision's resize, crop and affine kernels map
keypoints exactly as they resample images. `to_keypoints` and `from_keypoints` shift by half a pixel
between the two. torchvision's own horizontal flip assumes pixel centres (``x -> W - 1 - x``), so
the flips here are hand-written with the continuous ``x -> W - x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data.base import IGNORE_INDEX

TargetKind = Literal["mask", "keypoints"]


def _check_permutation(index: Sequence[int], what: str) -> list[int]:
    index = [int(i) for i in index]
    if sorted(index) != list(range(len(index))):
        raise ValueError(f"{what} must be a permutation of 0..{len(index) - 1}, got {index}")
    return index


def mirror_keypoints(keypoints: tv_tensors.KeyPoints) -> tv_tensors.KeyPoints:
    """Mirror continuous keypoints left-right in their canvas: ``x -> W - x`` (module docstring)."""
    mirrored = keypoints.as_subclass(Tensor).clone()
    mirrored[..., 0] = keypoints.canvas_size[1] - mirrored[..., 0]
    return tv_tensors.wrap(mirrored, like=keypoints)


class _SwappingHorizontalFlip(v2.Transform):
    """Flip every input left-right with probability ``p``; subclasses relabel what flipping swaps."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # One draw per sample, shared by the image and its target.
        return {"flip": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["flip"]:
            return inpt
        if isinstance(inpt, tv_tensors.KeyPoints):
            return self._relabel_keypoints(mirror_keypoints(inpt))
        flipped = self._call_kernel(F.horizontal_flip, inpt)
        if isinstance(inpt, tv_tensors.Mask):
            return self._relabel_mask(flipped)
        return flipped

    def _relabel_keypoints(self, keypoints: tv_tensors.KeyPoints) -> tv_tensors.KeyPoints:
        return keypoints

    def _relabel_mask(self, mask: tv_tensors.Mask) -> tv_tensors.Mask:
        return mask


class HorizontalFlipWithLandmarkSwap(_SwappingHorizontalFlip):
    """Horizontal flip that also renumbers keypoints: a mirrored left eye is the right eye.

    Images and masks are flipped; keypoints ``(..., K, 2)`` (continuous, as made by `to_keypoints`)
    are mirrored and then reordered so that output keypoint ``k`` is the mirrored input keypoint
    ``flip_index[k]``.

    Args:
        flip_index: Permutation of ``range(K)``: the mirror partner of every keypoint (itself for
            keypoints on the symmetry axis).
        p: Probability of flipping a sample.
    """

    def __init__(self, flip_index: Sequence[int], p: float = 0.5) -> None:
        super().__init__(p)
        self.flip_index = _check_permutation(flip_index, "flip_index")

    def _relabel_keypoints(self, keypoints: tv_tensors.KeyPoints) -> tv_tensors.KeyPoints:
        if keypoints.shape[-2] != len(self.flip_index):
            raise ValueError(
                f"flip_index has {len(self.flip_index)} entries for {keypoints.shape[-2]} keypoints"
            )
        swapped = keypoints.as_subclass(Tensor)[..., self.flip_index, :]
        return tv_tensors.wrap(swapped, like=keypoints)


class HorizontalFlipWithClassSwap(_SwappingHorizontalFlip):
    """Horizontal flip that also renames mirrored classes of a mask (left eye <-> right eye).

    Args:
        class_flip_index: Permutation of ``range(num_classes)``: the class a pixel of class ``c``
            belongs to after mirroring. Values outside it (`IGNORE_INDEX`) are kept.
        p: Probability of flipping a sample.
    """

    def __init__(self, class_flip_index: Sequence[int], p: float = 0.5) -> None:
        super().__init__(p)
        index = _check_permutation(class_flip_index, "class_flip_index")
        if len(index) > IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX} classes can be swapped")
        # A lookup table over every uint8 value, so ignore pixels map to themselves.
        self.lookup = torch.arange(IGNORE_INDEX + 1)
        self.lookup[: len(index)] = torch.tensor(index)

    def _relabel_mask(self, mask: tv_tensors.Mask) -> tv_tensors.Mask:
        plain = mask.as_subclass(Tensor)
        relabelled = self.lookup.to(plain.device)[plain.long()].to(plain.dtype)
        return tv_tensors.wrap(relabelled, like=mask)


@dataclass(frozen=True)
class DenseAugmentation:
    """The random geometry and colour of training samples that carry a mask or keypoints.

    Applied in this order: scale jitter and crop, random affine, the data set's swapping flip,
    photometric distortion. Pixels brought in from outside the image are black, and `IGNORE_INDEX`
    in masks.

    Args:
        degrees: Maximum absolute rotation of the affine, in degrees (uniform).
        translate: Maximum shift of the affine, as a fraction of the side.
        scale: Range of the affine's random zoom (uniform).
        flip: Mirror half of the samples (with the data set's left/right relabelling).
        resize_range: ``(low, high)``: first resize the side S to a random side in ``[low*S, high*S]``
            (mmsegmentation's ratio-range scale jitter); ``None``: no jitter.
        crop_size: Then a random ``crop_size`` square crop, padded where the image is smaller.
        photometric: Brightness, contrast, saturation and hue jitter, each with probability 0.5
            (the ranges of mmsegmentation's ``PhotoMetricDistortion``, in torchvision's terms).
    """

    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    resize_range: tuple[float, float] | None = None
    crop_size: int | None = None
    photometric: bool = False

    def geometry(self, image_size: int) -> list[v2.Transform]:
        """Scale jitter, crop and affine for images of side ``image_size``."""
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        steps: list[v2.Transform] = []
        if self.resize_range is not None:
            low, high = self.resize_range
            steps.append(
                v2.RandomResize(round(low * image_size), round(high * image_size) + 1, antialias=True)
            )
        if self.crop_size is not None:
            steps.append(v2.RandomCrop(self.crop_size, pad_if_needed=True, fill=fill))
        if self.degrees or self.translate or tuple(self.scale) != (1.0, 1.0):
            steps.append(
                v2.RandomAffine(
                    degrees=self.degrees,
                    translate=(self.translate, self.translate),
                    scale=tuple(self.scale),
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=fill,
                )
            )
        return steps

    def colour(self) -> list[v2.Transform]:
        """The photometric distortion (images only; masks and keypoints pass through)."""
        if not self.photometric:
            return []
        jitters = [
            v2.ColorJitter(brightness=32 / 255),
            v2.ColorJitter(contrast=(0.5, 1.5)),
            v2.ColorJitter(saturation=(0.5, 1.5)),
            v2.ColorJitter(hue=0.1),  # mmseg's 18 of OpenCV's 180 hue steps
        ]
        return [v2.RandomApply([jitter], p=0.5) for jitter in jitters]


def build_pipeline(
    augment: bool,
    flip: v2.Transform | None = None,
    augmentation: DenseAugmentation | None = None,
    image_size: int = 0,
) -> v2.Compose:
    """The per-sample pipeline: random geometry, flip and colour if ``augment``, then the batch dtypes.

    Args:
        augment: Apply the random transforms (training); ``False`` only converts dtypes (evaluation).
        flip: The data set's flip transform (e.g. `HorizontalFlipWithLandmarkSwap`).
        augmentation: What to apply; default `DenseAugmentation()`.
        image_size: Side of the samples before augmentation (needed by ``resize_range``).
    """
    augmentation = augmentation or DenseAugmentation()
    steps: list[v2.Transform] = []
    if augment:
        steps += augmentation.geometry(image_size)
        if flip is not None and augmentation.flip:
            steps.append(flip)
        steps += augmentation.colour()
    # Images to float in [0, 1]; masks to class ids; keypoints to float coordinates.
    dtypes = {
        tv_tensors.Image: torch.float32,
        tv_tensors.Mask: torch.long,
        tv_tensors.KeyPoints: torch.float32,
    }
    steps.append(v2.ToDtype(dtypes, scale=True))
    return v2.Compose(steps)


def to_keypoints(points: Tensor, canvas_size: tuple[int, int]) -> tv_tensors.KeyPoints:
    """Pixel-centre ``(..., 2)`` points as continuous `tv_tensors.KeyPoints` on a ``(H, W)`` canvas."""
    return tv_tensors.KeyPoints(points + 0.5, canvas_size=canvas_size)


def from_keypoints(keypoints: Tensor) -> Tensor:
    """Continuous `tv_tensors.KeyPoints` back to plain pixel-centre points."""
    return keypoints.as_subclass(Tensor) - 0.5


def wrap_sample(
    image: Tensor, target: Tensor, kind: TargetKind
) -> tuple[tv_tensors.Image, tv_tensors.TVTensor]:
    """Tag a ``(C, H, W)`` image and its ``(H, W)`` mask or pixel-centre ``(K, 2)`` keypoints for v2."""
    if kind == "mask":
        return tv_tensors.Image(image), tv_tensors.Mask(target)
    return tv_tensors.Image(image), to_keypoints(target, (image.shape[-2], image.shape[-1]))


class JointDataset(Dataset):
    """Base of the dense data sets: ``load`` one raw sample, run the joint pipeline, return tensors.

    Subclasses implement ``__len__`` and ``load(index) -> (image, target)``, where ``image`` is a
    ``(C, H, W)`` uint8 or [0, 1] float tensor and ``target`` a ``(H, W)`` mask or ``(K, 2)``
    pixel-centre keypoints.

    Args:
        kind: Whether targets are masks or keypoints.
        transform: A pipeline from `build_pipeline`; ``None`` uses the evaluation one.
    """

    def __init__(self, kind: TargetKind, transform: v2.Transform | None = None) -> None:
        self.kind = kind
        self.transform = transform if transform is not None else build_pipeline(augment=False)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """The raw ``(image, target)`` of sample ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, target = self.transform(wrap_sample(*self.load(index), self.kind))
        # Plain tensors, so that collation and the model never see tv_tensor subclasses.
        target = from_keypoints(target) if self.kind == "keypoints" else target.as_subclass(Tensor)
        return image.as_subclass(Tensor), target
