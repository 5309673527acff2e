"""CelebAMask-HQ face parsing: 30,000 face images with 19-class masks merged from binary part masks.

The published archive holds ``CelebA-HQ-img/<id>.jpg`` (1024 px) and, per face, one binary 512 px
PNG per visible part, ``CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png`` (white = part).
The label map paints the parts in class order, so later classes overwrite earlier ones (hair over
skin, hat over hair), which is how the dataset's own ``g_mask.py`` builds its label maps.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import DatasetLayout, read_image
from repfusion_pl.data.splits import check_fractions, held_out_counts, seeded_split
from repfusion_pl.data.transforms import (
    DenseAugmentation,
    HorizontalFlipWithClassSwap,
    JointDataset,
    build_pipeline,
)

PARTS = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
#: Class id = index; 0 is background, part ``PARTS[i]`` is class ``i + 1``.
CLASS_NAMES = ("background", *PARTS)


def _class_flip_index() -> list[int]:
    """The class every class becomes when mirrored: left and right brows, eyes and ears swap."""
    index = list(range(len(CLASS_NAMES)))
    for left, right in (("l_brow", "r_brow"), ("l_eye", "r_eye"), ("l_ear", "r_ear")):
        a, b = CLASS_NAMES.index(left), CLASS_NAMES.index(right)
        index[a], index[b] = b, a
    return index


CLASS_FLIP_INDEX = _class_flip_index()
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
#: Official CelebA split by 0-based CelebA index: train below the first, val below the second.
CELEBA_SPLIT_ENDS = (162770, 182637)
LAYOUT = DatasetLayout(
    "CelebAMask-HQ",
    """\
    CelebA-HQ-img/
        0.jpg
        1.jpg
        ...
        29999.jpg
    CelebAMask-HQ-mask-anno/
        0/                  (folder k holds ids 2000k .. 2000k + 1999)
            00000_skin.png  (<id:05d>_<part>.png, binary, white = part)
            00000_hair.png
            ...
        ...
        14/
    CelebA-HQ-to-CelebA-mapping.txt  (optional, columns idx orig_idx orig_file: official split)
""",
)
_IMAGE_NAME = re.compile(r"(\d+)\.jpg")
_MASK_NAME = re.compile(r"(\d+)_([a-z_]+)\.png")


def index_images(root: Path) -> list[int]:
    """Sorted ids of the ``<id>.jpg`` images under ``root/CelebA-HQ-img``."""
    ids = sorted(
        int(m.group(1)) for name in os.listdir(root / IMAGE_DIR) if (m := _IMAGE_NAME.fullmatch(name))
    )
    if not ids:
        raise LAYOUT.error(root, f"no <id>.jpg images in {root / IMAGE_DIR}")
    return ids


def index_masks(root: Path) -> dict[int, tuple[str, tuple[int, ...]]]:
    """For every id with part masks: the folder that holds them and their class ids, ascending."""
    found: dict[int, tuple[str, set[int]]] = {}
    for folder in sorted(os.listdir(root / MASK_DIR)):
        if not (root / MASK_DIR / folder).is_dir():
            continue
        for name in os.listdir(root / MASK_DIR / folder):
            match = _MASK_NAME.fullmatch(name)
            if match and match.group(2) in PARTS:
                face = int(match.group(1))
                entry = found.setdefault(face, (folder, set()))
                if entry[0] != folder:
                    raise LAYOUT.error(
                        root, f"id {face} has part masks in both {MASK_DIR}/{entry[0]} and /{folder}"
                    )
                entry[1].add(CLASS_NAMES.index(match.group(2)))
    return {i: (folder, tuple(sorted(classes))) for i, (folder, classes) in found.items()}


def read_official_split(path: Path, root: Path) -> dict[int, str]:
    """Map CelebA-HQ ids to ``train``/``val``/``test`` by their CelebA index (``idx orig_idx ...`` rows)."""
    split_of = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or (number == 1 and not fields[0].isdigit()):
            continue  # the header row, blank lines
        if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise LAYOUT.error(root, f"{path}:{number}: expected 'idx orig_idx orig_file', got {line!r}")
        orig = int(fields[1])
        split_of[int(fields[0])] = (
            "train" if orig < CELEBA_SPLIT_ENDS[0] else "val" if orig < CELEBA_SPLIT_ENDS[1] else "test"
        )
    return split_of


def check_root(root: str | Path) -> Path:
    """``root`` as a Path, checked to hold non-empty image and mask folders and no empty mapping file."""
    root = LAYOUT.check(root, [f"{IMAGE_DIR}/", f"{MASK_DIR}/"])
    mapping = root / MAPPING_FILE
    if mapping.exists() and mapping.stat().st_size == 0:
        raise LAYOUT.error(root, f"empty file {mapping}")
    return root


def index_faces(root: Path) -> tuple[list[int], dict[int, tuple[str, tuple[int, ...]]]]:
    """The sorted face ids (`index_images`) and their part masks (`index_masks`); every face needs some."""
    ids, masks = index_images(root), index_masks(root)
    unmasked = [i for i in ids if i not in masks]
    if unmasked:
        raise LAYOUT.error(root, f"{len(unmasked)} images have no part masks, e.g. ids {unmasked[:5]}")
    return ids, masks


def split_ids(
    root: Path, ids: list[int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """The ``train``/``val``/``test`` face ids: CelebA's official split by the mapping file, if any.

    Without the mapping file, a `seeded_split` with the held-out fractions.
    """
    mapping = root / MAPPING_FILE
    if not mapping.exists():
        counts = held_out_counts(len(ids), val_fraction, test_fraction)
        parts = seeded_split(len(ids), counts, torch.Generator().manual_seed(seed))
        return {
            name: [ids[i] for i in part.tolist()]
            for name, part in zip(("train", "val", "test"), parts, strict=True)
        }
    split_of = read_official_split(mapping, root)
    unmapped = [i for i in ids if i not in split_of]
    if unmapped:
        raise LAYOUT.error(root, f"{len(unmapped)} image ids missing from {mapping}, e.g. {unmapped[:5]}")
    return {name: [i for i in ids if split_of[i] == name] for name in ("train", "val", "test")}


def merge_part_masks(paths: list[Path], class_ids: tuple[int, ...]) -> Tensor:
    """Paint binary part masks into one ``(H, W)`` uint8 label map, later classes on top.

    Raises:
        ValueError: When the part masks of one face differ in size.
    """
    label: Tensor | None = None
    for path, class_id in zip(paths, class_ids, strict=True):
        part = read_image(path, ImageReadMode.GRAY)[0]
        if label is None:
            label = torch.zeros_like(part)
        elif part.shape != label.shape:
            raise ValueError(
                f"part mask {path} is {tuple(part.shape)}, others of its face {tuple(label.shape)}"
            )
        label[part > 0] = class_id  # any non-zero pixel is the part, as in the dataset's g_mask.py
    if label is None:
        raise ValueError("a face needs at least one part mask")
    return label


class CelebAMaskHQDataset(JointDataset):
    """CelebAMask-HQ faces and merged label maps, both resized to ``image_size``.

    Args:
        root: The CelebAMask-HQ folder.
        ids: Face ids of this split.
        masks: Per id, the mask folder and the class ids of its part masks (`index_masks`).
        image_size: Side of the returned images and masks.
        transform: Joint pipeline (`build_pipeline`).
    """

    def __init__(
        self,
        root: Path,
        ids: list[int],
        masks: dict[int, tuple[str, tuple[int, ...]]],
        image_size: int,
        transform: v2.Transform | None = None,
    ) -> None:
        super().__init__("mask", transform)
        self.root, self.ids, self.image_size = root, ids, image_size
        self.masks = {i: masks[i] for i in ids}

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        face = self.ids[index]
        folder, class_ids = self.masks[face]
        paths = [self.root / MASK_DIR / folder / f"{face:05d}_{CLASS_NAMES[c]}.png" for c in class_ids]
        size = [self.image_size, self.image_size]
        image = F.resize(read_image(self.root / IMAGE_DIR / f"{face}.jpg"), size, antialias=True)
        # Nearest-exact samples at pixel centres, aligned with the image's resampling.
        mask = merge_part_masks(paths, class_ids)[None]
        mask = F.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)[0]
        return image, mask


class CelebAMaskHQDataModule(BaseDataModule):
    """CelebAMask-HQ face parsing, 19 classes (`CLASS_NAMES`), from the published folder layout.

    Batches are images ``(N, 3, S, S)`` in [0, 1] and long masks ``(N, S, S)``. With the
    ``CelebA-HQ-to-CelebA-mapping.txt`` file the split is CelebA's official one (about 24k/3k/3k
    faces); without it, a seeded split by fractions. Training samples get a random affine and a
    horizontal flip that swaps left/right classes when ``augment`` is on.

    Args:
        root: The CelebAMask-HQ folder (layout in `LAYOUT`).
        image_size: Side S the images (1024 px) and masks (512 px) are resized to.
        batch_size: Batch size for every split.
        num_workers: DataLoader workers decoding the files.
        augment: Random affine and class-swapping flip on training samples.
        seed: Seed of the split when there is no mapping file.
        val_fraction: Share of faces for validation without the mapping file.
        test_fraction: Share of faces for testing without the mapping file.
        augmentation: The random geometry and colour of training samples (`DenseAugmentation`;
            default: a small affine and the swapping flip).

    Raises:
        DatasetLayoutError: At construction when ``root`` lacks the image or mask folder, and at
            ``setup`` when images have no part masks or the mapping file is malformed.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    class_flip_index = CLASS_FLIP_INDEX
    in_channels = 3

    def __init__(
        self,
        root: str | Path,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 4,
        augment: bool = True,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        augmentation: DenseAugmentation | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.augmentation = augmentation or DenseAugmentation()
        self.root = check_root(root)
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ids, masks = index_faces(self.root)
        parts = split_ids(self.root, ids, self.val_fraction, self.test_fraction, self.seed)
        train = build_pipeline(
            self.augment, HorizontalFlipWithClassSwap(CLASS_FLIP_INDEX), self.augmentation, self.image_size
        )
        for name, split in parts.items():
            transform = train if name == "train" else None
            self.splits[name] = CelebAMaskHQDataset(self.root, split, masks, self.image_size, transform)
