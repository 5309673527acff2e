"""WFLW face alignment: 10,000 faces (7,500 train, 2,500 test) with 98 landmarks each.

Each annotation line holds 196 coordinates ``x0 y0 ... x97 y97``, the face box ``x_min y_min x_max
y_max``, six attribute flags (pose, expression, illumination, make-up, occlusion, blur) and the image
path relative to ``WFLW_images``. Coordinates are pixel-centre ones (``x = j`` is the centre of
column ``j``), as in the batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import DatasetLayout, read_image
from repfusion_pl.data.splits import check_fractions, held_out_counts, seeded_split
from repfusion_pl.data.transforms import (
    DenseAugmentation,
    HorizontalFlipWithLandmarkSwap,
    JointDataset,
    build_pipeline,
    from_keypoints,
    to_keypoints,
)

NUM_KEYPOINTS = 98
ATTRIBUTE_NAMES = ("pose", "expression", "illumination", "make_up", "occlusion", "blur")
IMAGE_DIR = "WFLW_images"
ANNOTATION_DIR = "WFLW_annotations/list_98pt_rect_attr_train_test"
ANNOTATION_FILES = {
    "train": f"{ANNOTATION_DIR}/list_98pt_rect_attr_train.txt",
    "test": f"{ANNOTATION_DIR}/list_98pt_rect_attr_test.txt",
}
LAYOUT = DatasetLayout(
    "WFLW",
    """\
    WFLW_images/
        0--Parade/
            0_Parade_marchingband_1_116.jpg
            ...
        ...
    WFLW_annotations/
        list_98pt_rect_attr_train_test/
            list_98pt_rect_attr_train.txt  (a face a line: x0 y0 .. x97 y97, x_min y_min x_max y_max,
                                            6 attribute flags, image path below WFLW_images/)
            list_98pt_rect_attr_test.txt   (the same for the test faces)
""",
)
REQUIRED = (f"{IMAGE_DIR}/", *ANNOTATION_FILES.values())
_FIELDS = 2 * NUM_KEYPOINTS + 4 + len(ATTRIBUTE_NAMES) + 1


def _wflw_flip_index() -> list[int]:
    """The WFLW mirror permutation, from the layout of the 98 points.

    Both halves of the face are annotated in the same traversal direction (left to right in the
    image along upper edges, right to left along lower edges), so partners run in opposite orders.
    The result agrees with the swap table of mmpose's WFLW dataset description.
    """
    pairs = [(i, 32 - i) for i in range(16)]  # contour, chin 16 on the axis
    pairs += [(33 + i, 46 - i) for i in range(5)]  # brows, upper edges (outer..inner, inner..outer)
    pairs += [(38 + i, 50 - i) for i in range(4)]  # brows, lower edges
    pairs += [(55, 59), (56, 58)]  # nose base; bridge 51-54 and tip 57 on the axis
    pairs += [(60 + i, 72 - i) for i in range(5)]  # eyes: outer corner, upper lid, inner corner
    pairs += [(65 + i, 75 - i) for i in range(3)]  # eyes: lower lids
    pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86)]  # outer lips; 79 and 85 on the axis
    pairs += [(88, 92), (89, 91), (93, 95)]  # inner lips; 90 and 94 on the axis
    pairs += [(96, 97)]  # eye centres
    index = list(range(NUM_KEYPOINTS))
    for a, b in pairs:
        index[a], index[b] = b, a
    return index


WFLW_FLIP_INDEX = _wflw_flip_index()


@dataclass
class WFLWAnnotations:
    """The faces of one annotation file.

    Attributes:
        keypoints: ``(N, 98, 2)`` float ``(x, y)`` in image pixels.
        boxes: ``(N, 4)`` float ``x_min, y_min, x_max, y_max`` in image pixels.
        attributes: ``(N, 6)`` long flags, in the order of `ATTRIBUTE_NAMES`.
        images: Image path of every face, relative to ``WFLW_images``.
    """

    keypoints: Tensor
    boxes: Tensor
    attributes: Tensor
    images: list[str]

    def subset(self, index: Tensor) -> WFLWAnnotations:
        """The faces at ``index``."""
        chosen = index.tolist()
        return WFLWAnnotations(
            self.keypoints[index], self.boxes[index], self.attributes[index], [self.images[i] for i in chosen]
        )


def parse_annotations(path: Path, root: Path) -> WFLWAnnotations:
    """Read one WFLW annotation file, checking every line and that every image exists.

    Raises:
        DatasetLayoutError: Naming the file and line of a malformed line, or the missing images.
    """
    numbers, images = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != _FIELDS:
                raise ValueError(f"{len(fields)} fields instead of {_FIELDS}")
            numbers.append([float(f) for f in fields[:-1]])
        except ValueError as err:
            raise LAYOUT.error(root, f"{path}:{number}: {err}") from None
        images.append(fields[-1])
    if not numbers:
        raise LAYOUT.error(root, f"no annotation lines in {path}")
    missing = sorted({image for image in images if not (root / IMAGE_DIR / image).is_file()})
    if missing:
        raise LAYOUT.error(root, f"{len(missing)} images named in {path} are missing, e.g. {missing[:3]}")
    table = torch.tensor(numbers, dtype=torch.float64)
    n = 2 * NUM_KEYPOINTS
    return WFLWAnnotations(
        keypoints=table[:, :n].view(-1, NUM_KEYPOINTS, 2).float(),
        boxes=table[:, n : n + 4].float(),
        attributes=table[:, n + 4 :].long(),
        images=images,
    )


def read_splits(root: Path, val_fraction: float, seed: int) -> dict[str, WFLWAnnotations]:
    """The official test faces, and a `seeded_split` of the training faces into ``train`` and ``val``.

    With ``val_fraction`` 0 every training face trains and the test faces validate.
    """
    train_faces = parse_annotations(root / ANNOTATION_FILES["train"], root)
    test_faces = parse_annotations(root / ANNOTATION_FILES["test"], root)
    count = len(train_faces.images)
    train_idx, val_idx, _ = seeded_split(
        count, held_out_counts(count, val_fraction), torch.Generator().manual_seed(seed)
    )
    # No held-out share: validate on the official test faces, as the authors did.
    val = train_faces.subset(val_idx) if len(val_idx) else test_faces
    return {"train": train_faces.subset(train_idx), "val": val, "test": test_faces}


def face_crop_box(box: Tensor, crop_scale: float) -> tuple[int, int, int]:
    """The square pixel crop ``(left, top, side)`` around a face box, ``crop_scale`` times its longer side.

    The crop spans columns ``left .. left + side - 1``; its centre is the pixel nearest to the box's.
    """
    x_min, y_min, x_max, y_max = box.tolist()
    side = max(1, round(crop_scale * max(x_max - x_min, y_max - y_min)))
    # Columns left .. left + side - 1 are centred on left + (side - 1) / 2 in pixel-centre terms.
    left = math.floor((x_min + x_max) / 2 - (side - 1) / 2 + 0.5)
    top = math.floor((y_min + y_max) / 2 - (side - 1) / 2 + 0.5)
    return left, top, side


class WFLWDataset(JointDataset):
    """WFLW faces cropped around their boxes and resized, with their 98 keypoints moved along.

    Args:
        root: The WFLW folder.
        faces: Annotations of this split.
        image_size: Side of the returned square crops.
        crop_scale: Crop side relative to the longer side of the face box.
        transform: Joint pipeline (`build_pipeline`).
    """

    def __init__(
        self,
        root: Path,
        faces: WFLWAnnotations,
        image_size: int,
        crop_scale: float,
        transform: v2.Transform | None = None,
    ) -> None:
        super().__init__("keypoints", transform)
        self.root, self.faces, self.image_size, self.crop_scale = root, faces, image_size, crop_scale

    def __len__(self) -> int:
        return len(self.faces.images)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        image = read_image(self.root / IMAGE_DIR / self.faces.images[index])
        left, top, side = face_crop_box(self.faces.boxes[index], self.crop_scale)
        keypoints = to_keypoints(self.faces.keypoints[index], (image.shape[-2], image.shape[-1]))
        # Parts of the crop outside the image come out black.
        crop = dict(top=top, left=left, height=side, width=side, size=[self.image_size] * 2)
        image = F.resized_crop(image, **crop, antialias=True)
        return image, from_keypoints(F.resized_crop(keypoints, **crop))


class WFLWDataModule(BaseDataModule):
    """WFLW 98-point face alignment from the published folder layout.

    Batches are square face crops ``(N, 3, S, S)`` in [0, 1] and keypoints ``(N, 98, 2)`` as
    ``(x, y)`` in the crop. Validation faces are a seeded share of the training file; the test
    split is the official test file. Training samples get a random affine and a flip that swaps
    left/right keypoints when ``augment`` is on.

    Args:
        root: The WFLW folder (layout in `LAYOUT`).
        image_size: Side S of the face crops.
        batch_size: Batch size for every split.
        num_workers: DataLoader workers decoding the images.
        augment: Random affine and landmark-swapping flip on training samples.
        seed: Seed of the train/val split.
        val_fraction: Share of the training faces held out for validation; 0 validates on the test faces.
        crop_scale: Crop side relative to the longer side of the face box.
        augmentation: The random geometry and colour of training samples (`DenseAugmentation`;
            default: a small affine and the swapping flip).

    Raises:
        DatasetLayoutError: At construction when ``root`` lacks the image folder or an annotation
            file, and at ``setup`` for malformed annotation lines or missing images.
    """

    num_keypoints = NUM_KEYPOINTS
    flip_index = WFLW_FLIP_INDEX
    #: Outer eye corners: the inter-ocular normalisation of the standard WFLW NME.
    normalisation_index = (60, 72)
    in_channels = 3

    def __init__(
        self,
        root: str | Path,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 4,
        augment: bool = True,
        seed: int = 0,
        val_fraction: float = 0.1,
        crop_scale: float = 1.25,
        augmentation: DenseAugmentation | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction)
        if crop_scale <= 0:
            raise ValueError(f"crop_scale must be positive, got {crop_scale}")
        self.save_hyperparameters()
        self.augmentation = augmentation or DenseAugmentation()
        self.root = LAYOUT.check(root, REQUIRED)
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.val_fraction, self.crop_scale = val_fraction, crop_scale

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        parts = read_splits(self.root, self.val_fraction, self.seed)
        train = build_pipeline(
            self.augment, HorizontalFlipWithLandmarkSwap(WFLW_FLIP_INDEX), self.augmentation, self.image_size
        )
        for name, faces in parts.items():
            transform = train if name == "train" else None
            self.splits[name] = WFLWDataset(self.root, faces, self.image_size, self.crop_scale, transform)
