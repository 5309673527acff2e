"""Dense-prediction data: joint transforms, procedural shapes, CelebAMask-HQ and WFLW on tiny fixtures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data import CelebAMaskHQDataModule, ShapesDataModule, WFLWDataModule
from repfusion_pl.data.base import IGNORE_INDEX
from repfusion_pl.data.celebamask import CLASS_FLIP_INDEX, CLASS_NAMES
from repfusion_pl.data.files import CorruptImageError, DatasetLayoutError
from repfusion_pl.data.shapes import TensorJointDataset, generate_shapes
from repfusion_pl.data.transforms import (
    DenseAugmentation,
    HorizontalFlipWithClassSwap,
    HorizontalFlipWithLandmarkSwap,
    build_pipeline,
    from_keypoints,
    to_keypoints,
    wrap_sample,
)
from repfusion_pl.data.wflw import WFLW_FLIP_INDEX, face_crop_box


def centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (x, y) of a (C, H, W) image, in pixel-centre coordinates."""
    weight = image.float().mean(0)
    weight = torch.where(weight > 0.2 * weight.max(), weight, torch.zeros_like(weight))
    ys, xs = torch.meshgrid(torch.arange(weight.shape[0]), torch.arange(weight.shape[1]), indexing="ij")
    return torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def dot_image(size: int, x: int, y: int) -> torch.Tensor:
    """A black float image with a white 3x3 block centred on pixel (x, y)."""
    image = torch.zeros(3, size, size)
    image[:, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return image


# --- transforms ---------------------------------------------------------------------------------


def test_landmark_flip_mirrors_and_swaps_hand_computed():
    flip = HorizontalFlipWithLandmarkSwap([1, 0, 2], p=1.0)
    image = torch.zeros(3, 6, 10)
    image[:, 2, 1] = 1.0  # the pixel under keypoint 0
    points = torch.tensor([[1.0, 2.0], [7.0, 3.0], [4.0, 4.0]])
    out_image, out_points = flip(wrap_sample(image, points, "keypoints"))
    # Pixel-centre x -> 9 - x, then keypoints 0 and 1 trade places.
    assert torch.allclose(from_keypoints(out_points), torch.tensor([[2.0, 3.0], [8.0, 2.0], [5.0, 4.0]]))
    assert out_image[0, 2, 8] == 1.0  # the image moved with mirrored keypoint 0 (now index 1)
    # On continuous tv_tensors the mirror is x -> W - x.
    continuous = flip(
        tv_tensors.KeyPoints(torch.tensor([[0.0, 1.0], [10.0, 2.0], [2.5, 0.0]]), canvas_size=(6, 10))
    )
    assert torch.allclose(continuous, torch.tensor([[0.0, 2.0], [10.0, 1.0], [7.5, 0.0]]))


def test_flip_respects_p_and_rejects_bad_permutations():
    points = tv_tensors.KeyPoints(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), canvas_size=(8, 8))
    assert torch.equal(HorizontalFlipWithLandmarkSwap([1, 0], p=0.0)(points), points)
    with pytest.raises(ValueError, match="permutation"):
        HorizontalFlipWithLandmarkSwap([0, 0])
    with pytest.raises(ValueError, match="3 entries for 2 keypoints"):
        HorizontalFlipWithLandmarkSwap([0, 2, 1], p=1.0)(points)


def test_class_swap_flip_relabels_mirrored_classes_and_keeps_ignore():
    flip = HorizontalFlipWithClassSwap([0, 1, 3, 2, 5, 4], p=1.0)
    mask = tv_tensors.Mask(torch.tensor([[2, 0, 4, IGNORE_INDEX]], dtype=torch.uint8))
    out = flip(mask)
    assert isinstance(out, tv_tensors.Mask) and out.dtype == torch.uint8
    assert out.tolist() == [[IGNORE_INDEX, 5, 0, 3]]


@pytest.mark.parametrize("seed", range(4))
def test_pipeline_keeps_keypoints_on_the_pixels_they_mark(seed):
    # The random affine, flip and dtype steps move a keypoint exactly like the image content under it.
    image, point = dot_image(48, 17, 30), torch.tensor([[17.0, 30.0]])
    pipeline = build_pipeline(
        True, HorizontalFlipWithLandmarkSwap([0]), DenseAugmentation(degrees=25, scale=(0.8, 1.3))
    )
    torch.manual_seed(seed)
    out_image, out_point = TensorJointDataset(image[None], point[None], "keypoints", pipeline)[0]
    assert torch.allclose(centroid(out_image), out_point[0], atol=0.15)


def test_pipeline_fills_masks_with_ignore_and_converts_dtypes():
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    mask = torch.ones(20, 20, dtype=torch.uint8)
    dataset = TensorJointDataset(
        image[None],
        mask[None],
        "mask",
        build_pipeline(True, augmentation=DenseAugmentation(degrees=45, translate=0.0)),
    )
    torch.manual_seed(0)
    samples = [dataset[0] for _ in range(8)]
    for out_image, out_mask in samples:
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        assert out_image.dtype == torch.float32 and 0 <= out_image.min() and out_image.max() <= 1
        assert out_mask.dtype == torch.long and set(out_mask.unique().tolist()) <= {1, IGNORE_INDEX}
    # Rotated corners bring in pixels from outside the image: unlabelled, not background.
    assert any((out_mask == IGNORE_INDEX).any() for _, out_mask in samples)


def test_resized_crop_convention_matches_image_resampling():
    image, point = dot_image(30, 12, 7), torch.tensor([[12.0, 7.0]])
    crop = dict(top=3, left=8, height=15, width=15, size=[45, 45])
    out_point = from_keypoints(F.resized_crop(to_keypoints(point, (30, 30)), **crop))
    # Hand-computed: pixel-centre (x - left + 0.5) * 3 - 0.5.
    assert torch.allclose(out_point, torch.tensor([[13.0, 13.0]]))
    assert torch.allclose(centroid(F.resized_crop(image, **crop)), out_point[0], atol=0.05)


# --- shapes -------------------------------------------------------------------------------------


def test_shapes_keypoints_lie_on_the_shapes_they_name():
    images, masks, points = generate_shapes(200, 32, torch.Generator().manual_seed(3))
    n = torch.arange(len(points))[:, None]
    px, py = points.round().long().unbind(-1)
    assert (masks[n, py, px] == torch.tensor([1, 2, 3, 2, 2])).all()
    # Keypoints 3 and 4 are the square's top corners: nothing of the square above or beside them.
    x3, y3, x4 = px[:, 3], py[:, 3], px[:, 4]
    assert (y3 == py[:, 4]).all() and (x3 < x4).all()
    rows = torch.arange(len(points))
    assert (masks[rows, (y3 - 1).clamp(min=0), x3] != 2).logical_or(y3 == 0).all()
    assert (masks[rows, y3, (x3 - 1).clamp(min=0)] != 2).logical_or(x3 == 0).all()
    assert (masks[rows, y3, (x4 + 1).clamp(max=31)] != 2).logical_or(x4 == 31).all()
    assert torch.allclose(points[:, 1, 0], (points[:, 3, 0] + points[:, 4, 0]) / 2)  # centre between corners
    assert set(masks.unique().tolist()) == {0, 1, 2, 3}
    assert images.shape == (200, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_shapes_generation_is_seeded_and_fast():
    start = time.perf_counter()
    a = generate_shapes(768, 32, torch.Generator().manual_seed(0))
    assert time.perf_counter() - start < 1.0
    b = generate_shapes(768, 32, torch.Generator().manual_seed(0))
    c = generate_shapes(768, 32, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("target", ["mask", "keypoints"])
def test_shapes_datamodule_batches(target):
    dm = ShapesDataModule(target=target, image_size=16, num_train=20, num_val=6, num_test=5, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 20, "val": 6, "test": 5}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    if target == "mask":
        assert labels.shape == (4, 16, 16) and labels.dtype == torch.long
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    else:
        assert labels.shape == (4, 5, 2) and labels.dtype == torch.float32
    val_images, _ = next(iter(dm.val_dataloader()))
    again = ShapesDataModule(target=target, image_size=16, num_train=20, num_val=6, num_test=5, batch_size=4)
    again.setup()
    assert torch.equal(val_images, next(iter(again.val_dataloader()))[0])


def test_shapes_attributes_and_flip_keeps_corners_in_order():
    dm = ShapesDataModule(target="keypoints", num_train=8, num_val=0, num_test=0)
    assert (dm.num_classes, dm.num_keypoints, dm.in_channels) == (4, 5, 3)
    assert dm.flip_index == [0, 1, 2, 4, 3] and dm.normalisation_index == (3, 4)
    images, masks, points = generate_shapes(8, 32, torch.Generator().manual_seed(0))
    flip = HorizontalFlipWithLandmarkSwap(dm.flip_index, p=1.0)
    for i in range(8):
        (_, out_mask), (_, out_points) = (
            flip(wrap_sample(images[i], masks[i], "mask")),
            flip(wrap_sample(images[i], points[i], "keypoints")),
        )
        px, py = from_keypoints(out_points).round().long().unbind(-1)
        assert out_mask[py, px].tolist() == [1, 2, 3, 2, 2]
        assert px[3] < px[4]  # after the swap, keypoint 3 is again the left corner


def test_shapes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        ShapesDataModule(target="boxes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 16"):
        ShapesDataModule(image_size=8)


# --- CelebAMask-HQ ------------------------------------------------------------------------------

MASK_SIZE, IMAGE_SIZE = 32, 64
# Part rectangles (rows, cols) on the 32 px masks; the later class in CLASS_NAMES wins overlaps.
PART_BOXES = {
    "skin": (slice(4, 28), slice(4, 28)),
    "l_eye": (slice(10, 14), slice(8, 12)),
    "r_eye": (slice(10, 14), slice(20, 24)),
    "hair": (slice(0, 10), slice(0, 32)),
    "hat": (slice(0, 4), slice(0, 32)),
}


def write_celeba(root: Path, ids=(0, 1, 2001), mapping: dict[int, int] | None = None) -> Path:
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for face in ids:
        pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40 + face % 200, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "CelebA-HQ-img" / f"{face}.jpg", quality=95)
        folder = root / "CelebAMask-HQ-mask-anno" / str(face // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, box in PART_BOXES.items():
            mask = np.zeros((MASK_SIZE, MASK_SIZE), dtype=np.uint8)
            mask[box] = 255
            Image.fromarray(mask).save(folder / f"{face:05d}_{part}.png")
    if mapping is not None:
        lines = ["idx         orig_idx    orig_file"]
        lines += [f"{i}           {orig}      {orig + 1:06d}.jpg" for i, orig in mapping.items()]
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    return root


def celeba(root: Path, **kwargs) -> CelebAMaskHQDataModule:
    options = dict(
        image_size=32, batch_size=2, num_workers=0, augment=False, val_fraction=1 / 3, test_fraction=1 / 3
    )
    return CelebAMaskHQDataModule(root, **{**options, **kwargs})


def test_celeba_merges_parts_in_class_order(tmp_path):
    dm = celeba(write_celeba(tmp_path))
    dm.setup()
    assert sum(len(s) for s in dm.splits.values()) == 3 and dm.num_classes == 19
    image, mask = dm.splits["train"][0]
    assert (
        image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    assert mask.shape == (32, 32) and mask.dtype == torch.long
    cls = {name: CLASS_NAMES.index(name) for name in ("skin", "l_eye", "r_eye", "hair", "hat")}
    assert mask[20, 15] == cls["skin"] and mask[30, 30] == 0
    assert mask[6, 15] == cls["hair"]  # hair over skin
    assert mask[2, 15] == cls["hat"]  # hat over hair
    assert mask[11, 9] == cls["l_eye"] and mask[11, 21] == cls["r_eye"]  # eyes over skin


def test_celeba_resizes_masks_with_nearest(tmp_path):
    dm = celeba(write_celeba(tmp_path), image_size=16)
    dm.setup()
    images, masks = next(iter(dm.test_dataloader()))
    assert images.shape == (1, 3, 16, 16) and masks.shape == (1, 16, 16)
    assert set(masks.unique().tolist()) == {0, 1, 4, 5, 17, 18}


def test_celeba_official_split_from_mapping_file(tmp_path):
    root = write_celeba(tmp_path, mapping={0: 190000, 1: 10, 2001: 170000, 5: 3})
    dm = celeba(root)
    dm.setup()
    assert dm.splits["train"].ids == [1] and dm.splits["val"].ids == [2001] and dm.splits["test"].ids == [0]


def test_celeba_seeded_split_without_mapping(tmp_path):
    root = write_celeba(tmp_path)
    first, second = celeba(root, seed=0), celeba(root, seed=0)
    first.setup(), second.setup()
    ids = {name: split.ids for name, split in first.splits.items()}
    assert ids == {name: split.ids for name, split in second.splits.items()}
    assert sorted(sum(ids.values(), [])) == [0, 1, 2001] and all(len(v) == 1 for v in ids.values())


def test_celeba_training_flip_swaps_left_and_right_classes(tmp_path):
    dm = celeba(write_celeba(tmp_path, ids=(0,)), augment=True, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    dataset = dm.splits["train"]
    l_eye, r_eye = CLASS_NAMES.index("l_eye"), CLASS_NAMES.index("r_eye")
    assert CLASS_FLIP_INDEX[l_eye] == r_eye and CLASS_FLIP_INDEX[
        CLASS_NAMES.index("l_ear")
    ] == CLASS_NAMES.index("r_ear")
    flip = HorizontalFlipWithClassSwap(CLASS_FLIP_INDEX, p=1.0)
    dataset.transform = build_pipeline(
        True, flip, DenseAugmentation(degrees=0, translate=0.0, scale=(1.0, 1.0))
    )
    _, mask = dataset[0]
    # The l_eye box (cols 8..11) lands on cols 20..23 and is now called r_eye, and vice versa.
    assert mask[11, 21] == r_eye and mask[11, 9] == l_eye


def test_celeba_errors_show_the_expected_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist") as missing:
        celeba(tmp_path / "nowhere")
    message = str(missing.value)
    assert "Expected layout:" in message and "\n        CelebA-HQ-img/\n" in message
    assert "\n                00000_skin.png" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DatasetLayoutError,
        match=r"(?s)  - missing folder .*CelebA-HQ-img\n  - missing folder .*mask-anno\nExpected",
    ):
        celeba(tmp_path / "empty")
    (tmp_path / "hollow" / "CelebA-HQ-img").mkdir(parents=True)
    (tmp_path / "hollow" / "CelebAMask-HQ-mask-anno").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"empty folder .*CelebA-HQ-img"):
        celeba(tmp_path / "hollow")
    root = write_celeba(tmp_path / "no-masks-for-one")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "CelebA-HQ-img" / "7.jpg")
    with pytest.raises(DatasetLayoutError, match=r"1 images have no part masks, e.g. ids \[7\]"):
        celeba(root).setup()


def test_celeba_malformed_mapping_and_corrupt_image(tmp_path):
    root = write_celeba(tmp_path / "a", mapping={0: 1, 1: 2, 2001: 3})
    with open(root / "CelebA-HQ-to-CelebA-mapping.txt", "a") as file:
        file.write("12 not-a-number x.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"mapping.txt:5: expected 'idx orig_idx orig_file'"):
        celeba(root).setup()
    root = write_celeba(tmp_path / "b")
    (root / "CelebA-HQ-img" / "1.jpg").write_bytes(b"not a jpeg")
    dm = celeba(root, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*CelebA-HQ-img/1\.jpg"):
        dm.splits["train"][1]


# --- WFLW ---------------------------------------------------------------------------------------

ANNOTATIONS = "WFLW_annotations/list_98pt_rect_attr_train_test"


def face_points(seed: int) -> torch.Tensor:
    """98 points inside the fixture's face box, keypoint 0 on the white block at pixel (12, 7)."""
    points = torch.rand(98, 2, generator=torch.Generator().manual_seed(seed)) * 20 + torch.tensor([10.0, 5.0])
    points[0] = torch.tensor([12.0, 7.0])
    return points


def annotation_line(points: torch.Tensor, box=(10, 5, 30, 25), attributes=(0, 1, 0, 0, 1, 0), path="x.jpg"):
    coords = " ".join(f"{v:.6f}" for v in points.flatten().tolist())
    return f"{coords} {' '.join(map(str, box))} {' '.join(map(str, attributes))} {path}"


def write_wflw(root: Path) -> Path:
    event = root / "WFLW_images" / "0--Parade"
    event.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        pixels = np.zeros((30, 40, 3), dtype=np.uint8)
        pixels[6:9, 11:14] = 255
        Image.fromarray(pixels).save(event / name, quality=100)
    (root / ANNOTATIONS).mkdir(parents=True)
    train = [
        annotation_line(face_points(i), path=f"0--Parade/{n}")
        for i, n in enumerate(["a.jpg", "a.jpg", "b.jpg"])
    ]
    (root / ANNOTATIONS / "list_98pt_rect_attr_train.txt").write_text("\n".join(train) + "\n")
    test = annotation_line(face_points(9), path="0--Parade/c.jpg")
    (root / ANNOTATIONS / "list_98pt_rect_attr_test.txt").write_text(test + "\n")
    return root


def wflw(root: Path, **kwargs) -> WFLWDataModule:
    options = dict(image_size=50, batch_size=2, num_workers=0, augment=False, val_fraction=1 / 3)
    return WFLWDataModule(root, **{**options, **kwargs})


def test_wflw_crop_moves_keypoints_with_the_image(tmp_path):
    dm = wflw(write_wflw(tmp_path))
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 2, "val": 1, "test": 1}
    # Box (10, 5, 30, 25) x 1.25: a 25 px square at left 8, top 3, resized x2 to 50 px.
    assert face_crop_box(torch.tensor([10.0, 5.0, 30.0, 25.0]), 1.25) == (8, 3, 25)
    image, points = dm.splits["test"][0]
    assert (
        image.shape == (3, 50, 50) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    assert points.shape == (98, 2) and points.dtype == torch.float32
    expected = (face_points(9) - torch.tensor([8.0, 3.0]) + 0.5) * 2 - 0.5
    assert torch.allclose(points, expected, atol=1e-4)
    assert torch.allclose(points[0], torch.tensor([8.5, 8.5]))
    assert torch.allclose(centroid(image), points[0], atol=0.25)  # the white block is under keypoint 0
    batch_images, batch_points = next(iter(dm.train_dataloader()))
    assert batch_images.shape == (2, 3, 50, 50) and batch_points.shape == (2, 98, 2)


def test_wflw_attributes_and_flip_index_structure(tmp_path):
    dm = wflw(write_wflw(tmp_path))
    assert dm.num_keypoints == 98 and dm.normalisation_index == (60, 72) and dm.in_channels == 3
    index = dm.flip_index
    assert sorted(index) == list(range(98)) and [index[i] for i in index] == list(range(98))
    assert {i for i in range(98) if index[i] == i} == {16, 51, 52, 53, 54, 57, 79, 85, 90, 94}
    assert (index[0], index[33], index[38], index[60], index[65], index[76], index[96]) == (
        32,
        46,
        50,
        72,
        75,
        82,
        97,
    )


def symmetric_face(axis: float) -> torch.Tensor:
    """98 WFLW points of a face mirror-symmetric about x = axis, built from the annotation order.

    Both halves are traversed the same way: contour, upper brow edges and upper lids left to right,
    lower edges right to left, mouth contours from the left corner over the top.
    """
    points: list[tuple[float, float]] = []
    points += [(axis + 40 * t, 50 + 30 * (1 - t * t)) for t in np.linspace(-1, 1, 33)]  # contour 0-32
    for centre in (axis - 20, axis + 20):  # brows 33-41, 42-50
        points += [(centre + dx, 20 + 0.05 * dx * dx) for dx in (-8, -4, 0, 4, 8)]
        points += [(centre + dx, 23 + 0.05 * dx * dx) for dx in (6, 2, -2, -6)]
    points += [(axis, 30.0 + 4 * i) for i in range(4)]  # nose bridge 51-54
    points += [(axis + dx, 46.0) for dx in (-6, -3, 0, 3, 6)]  # nose base 55-59
    eye_angles = [math.pi - k * math.pi / 4 for k in range(8)]
    for centre in (axis - 20, axis + 20):  # eyes 60-67, 68-75
        points += [(centre + 8 * math.cos(a), 30 - 4 * math.sin(a)) for a in eye_angles]
    points += [
        (axis + 14 * math.cos(a), 70 - 5 * math.sin(a))
        for a in (math.pi - k * math.pi / 6 for k in range(12))
    ]
    points += [(axis + 10 * math.cos(a), 70 - 2 * math.sin(a)) for a in eye_angles]  # inner mouth 88-95
    points += [(axis - 20, 30.0), (axis + 20, 30.0)]  # eye centres 96, 97
    return torch.tensor(points, dtype=torch.float32)


def test_wflw_flip_index_maps_a_symmetric_face_onto_itself():
    image = torch.zeros(3, 90, 100)
    face = symmetric_face(axis=49.5)  # the mirror axis of a 100 px wide image, pixel-centre
    flip = HorizontalFlipWithLandmarkSwap(WFLW_FLIP_INDEX, p=1.0)
    _, flipped = flip(wrap_sample(image, face, "keypoints"))
    assert torch.allclose(from_keypoints(flipped), face, atol=1e-4)
    # Without the swap, the mirrored points would not match: the index is what makes it work.
    _, unswapped = HorizontalFlipWithLandmarkSwap(list(range(98)), p=1.0)(
        wrap_sample(image, face, "keypoints")
    )
    assert not torch.allclose(from_keypoints(unswapped), face, atol=1.0)


def test_wflw_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist") as missing:
        wflw(tmp_path / "nowhere")
    assert "\n                list_98pt_rect_attr_test.txt " in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="missing folder .*WFLW_images"):
        wflw(tmp_path / "empty")

    root = write_wflw(tmp_path / "bad-line")
    train_file = root / ANNOTATIONS / "list_98pt_rect_attr_train.txt"
    train_file.write_text(train_file.read_text() + "1.0 2.0 0--Parade/a.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"train.txt:4: 3 fields instead of 207"):
        wflw(root).setup()

    root = write_wflw(tmp_path / "missing-image")
    (root / "WFLW_images" / "0--Parade" / "b.jpg").unlink()
    with pytest.raises(
        DatasetLayoutError, match=r"1 images named in .* are missing, e.g. \['0--Parade/b.jpg'\]"
    ):
        wflw(root).setup()

    root = write_wflw(tmp_path / "empty-file")
    (root / ANNOTATIONS / "list_98pt_rect_attr_test.txt").write_text("")
    with pytest.raises(DatasetLayoutError, match="empty file .*test.txt"):
        wflw(root)

    root = write_wflw(tmp_path / "corrupt")
    (root / "WFLW_images" / "0--Parade" / "c.jpg").write_bytes(b"\xff\xd8 truncated")
    dm = wflw(root)
    dm.setup()
    with pytest.raises(CorruptImageError, match=r"WFLW_images/0--Parade/c\.jpg"):
        dm.splits["test"][0]


def test_scale_jitter_crop_and_photometric_keep_masks_aligned_and_untouched():
    """The face-parsing recipe's pipeline: 0.5-2x resize, 48 px crop padded with ignore, colour jitter."""
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 8:24, 8:24] = 200
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[8:24, 8:24] = 1
    augmentation = DenseAugmentation(
        degrees=0,
        translate=0,
        scale=(1, 1),
        flip=False,
        resize_range=(0.5, 2.0),
        crop_size=48,
        photometric=True,
    )
    pipeline = build_pipeline(True, augmentation=augmentation, image_size=32)
    sides, padded = set(), 0
    for _ in range(20):
        out_image, out_mask = pipeline(*wrap_sample(image, mask, "mask"))
        assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48)
        inside, grey = out_mask == 1, out_image.float().mean(0)
        if inside.any():
            # The square is where the mask says, whatever the colour jitter did (edges blur: IoU).
            weight = (grey - grey[out_mask == 0].mean()).clamp(min=0)
            ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
            bright_centre = torch.stack([(weight * ys).sum(), (weight * xs).sum()]) / weight.sum()
            mask_centre = torch.stack([ys[inside].mean(), xs[inside].mean()])
            assert (bright_centre - mask_centre).abs().max() < 0.75
        padded += int((out_mask == 255).any())
        sides.add(int(inside.sum()))
    assert padded > 0 and len(sides) > 3  # some resizes fell below the crop, and the scale varied
