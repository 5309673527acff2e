"""``repfusion embed`` through the real CLI: a tiny image folder, a real distillation checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from repfusion_pl.cli import main
from repfusion_pl.data.files import read_image
from repfusion_pl.data.labelled_images import image_transform
from repfusion_pl.students import Student, load_backbone_weights, read_backbone_weights

NAMES = ["a.png", "b.jpg", "cats/c.png", "cats/d.png", "dogs/e.png", "dogs/f.bmp", "dogs/g.png"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for index, name in enumerate(NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def embed(weights, out, *extra):
    main(["embed", str(weights), str(out), "--accelerator", "cpu", *map(str, extra)])


def outputs(out):
    with (out / "index.csv").open(newline="") as handle:
        index = list(csv.DictReader(handle))
    return np.load(out / "embeddings.npy"), index


def folder_args(folder):
    return ("--images", folder, "--image_size", 16, "--chunk_size", 3, "--batch_size", 2)


def test_a_run_writes_one_pooled_row_per_image_named_in_the_index(rgb_imagenet_checkpoint, folder, tmp_path):
    out = tmp_path / "emb"
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    array, index = outputs(out)
    assert array.dtype == np.float32 and array.shape == (len(NAMES), 512)
    assert [row["file"] for row in index] == NAMES and [int(row["row"]) for row in index] == list(range(7))
    assert (out / "skipped.txt").read_text() == ""
    record = json.loads((out / "embed.json").read_text())
    assert record["state"] == "complete" and record["embedded"] == 7 and record["dim"] == 512
    assert not (out / "chunks").exists()
    # Row 4 is what the distilled student gives for that image, average-pooled at its tap.
    weights = read_backbone_weights(rgb_imagenet_checkpoint)
    student = Student.from_spec(weights.spec, weights.provenance["student"]["taps"]).eval()
    load_backbone_weights(student.backbone, weights)
    image = image_transform(16, False)(read_image(folder / NAMES[4]))
    with torch.no_grad():
        expected = student(image[None])[student.taps[-1]].mean(dim=(2, 3))[0].numpy()
    np.testing.assert_allclose(array[4], expected, rtol=1e-4)  # batched vs alone: float sums differ


def test_an_export_and_a_hub_folder_give_the_same_embeddings_as_the_checkpoint(
    rgb_imagenet_checkpoint, folder, tmp_path
):
    exported, hub = tmp_path / "student.safetensors", tmp_path / "hub"
    main(["export", str(rgb_imagenet_checkpoint), str(exported), "--hub-folder", str(hub)])
    embed(rgb_imagenet_checkpoint, tmp_path / "from-ckpt", *folder_args(folder))
    from_checkpoint = outputs(tmp_path / "from-ckpt")[0]
    for weights in (exported, hub):
        embed(weights, tmp_path / f"from-{weights.name}", *folder_args(folder))
        np.testing.assert_array_equal(outputs(tmp_path / f"from-{weights.name}")[0], from_checkpoint)


def test_a_stopped_run_continues_to_the_same_array_as_a_straight_run(
    rgb_imagenet_checkpoint, folder, tmp_path, capsys
):
    embed(rgb_imagenet_checkpoint, tmp_path / "straight", *folder_args(folder))
    out = tmp_path / "stopped"
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder), "--max_chunks", 1)
    assert "stopped after 1 chunks (1 of 3 written); run again" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "chunks").glob("*.npz")) == ["000000.npz"]
    assert not (out / "embeddings.npy").exists()
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    straight, resumed = outputs(tmp_path / "straight"), outputs(out)
    np.testing.assert_array_equal(resumed[0], straight[0])  # the same batches, the same numbers
    assert resumed[1] == straight[1]
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    assert "already holds these 7 embeddings; nothing to do" in capsys.readouterr().out


def test_bf16_embeddings_stay_near_float32(rgb_imagenet_checkpoint, folder, tmp_path):
    embed(rgb_imagenet_checkpoint, tmp_path / "fp32", *folder_args(folder))
    embed(rgb_imagenet_checkpoint, tmp_path / "bf16", *folder_args(folder), "--precision", "bf16")
    full, half = outputs(tmp_path / "fp32")[0], outputs(tmp_path / "bf16")[0]
    assert half.dtype == np.float32 and half.shape == full.shape
    assert np.corrcoef(full.ravel(), half.ravel())[0, 1] > 0.99


def test_unreadable_images_are_skipped_and_listed(rgb_imagenet_checkpoint, folder, tmp_path):
    (folder / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "emb"
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    array, index = outputs(out)
    assert [row["file"] for row in index] == NAMES and len(array) == len(NAMES)
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == ["cats/broken.png", "empty.jpg"]
    assert skipped[0].split("\t")[1].startswith("OSError: ")  # the decoder's words, one line
    assert skipped[1].split("\t")[1].startswith("UnidentifiedImageError: cannot identify image file")
    assert json.loads((out / "embed.json").read_text())["skipped"] == 2


def test_a_changed_folder_or_other_settings_are_refused_on_resume(
    rgb_imagenet_checkpoint, folder, tmp_path, capsys
):
    out = tmp_path / "emb"
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder), "--max_chunks", 1)
    capsys.readouterr()
    (folder / "new.png").write_bytes((folder / "a.png").read_bytes())
    with pytest.raises(SystemExit) as exit_:
        embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "the images changed" in err and "7 files then, 8 now: 1 added (first: new.png)" in err
    (folder / "new.png").unlink()
    with pytest.raises(SystemExit):
        embed(rgb_imagenet_checkpoint, out, *folder_args(folder)[:-2], "--batch_size", 2, "--image_size", 24)
    assert "other settings (image_size 16 -> 24)" in capsys.readouterr().err
    embed(rgb_imagenet_checkpoint, out, *folder_args(folder))  # unchanged: it finishes
    (folder / "a.png").unlink()
    with pytest.raises(SystemExit):
        embed(rgb_imagenet_checkpoint, out, *folder_args(folder))
    assert "1 removed (first: a.png)" in capsys.readouterr().err


def test_a_data_module_split_is_embedded_with_its_labels(gray_cifar_checkpoint, tmp_path):
    out = tmp_path / "digits"
    data = ["--data.class_path", "repfusion_pl.data.DigitsDataModule", "--data.init_args.image_size", 8]
    embed(gray_cifar_checkpoint, out, *data, "--data.init_args.test_fraction", 0.05, "--split", "test")
    array, index = outputs(out)
    assert array.shape == (len(index), 512) and 80 <= len(index) <= 100
    assert index[0]["file"] == "test/0000000" and {row["label"] for row in index} <= set("0123456789")


def test_an_image_folder_data_module_names_rows_by_file_and_skips_broken_ones(
    rgb_imagenet_checkpoint, folder, tmp_path
):
    (folder / "cats" / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "emb"
    data = ("--data.class_path", "repfusion_pl.data.ImageFolderDataModule", "--data.init_args.root", folder)
    options = ("--data.init_args.labels", "false", "--data.init_args.image_size", 16)
    everything = ("--data.init_args.val_fraction", 0, "--data.init_args.test_fraction", 0)
    embed(rgb_imagenet_checkpoint, out, *data, *options, *everything, "--split", "train")
    array, index = outputs(out)
    assert sorted(row["file"] for row in index) == NAMES and len(array) == len(NAMES)  # named below root
    assert (out / "skipped.txt").read_text().startswith("cats/broken.png\t")
    assert "label" not in index[0]  # images alone: no label column


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ("--image_size", 16), "give one of --images DIR"),
        ("folder", (), "give --image_size with --images"),
        ("empty", ("--image_size", 16), "no images below"),
        ("clutter", ("--image_size", 16), "exists and holds other files"),
        ("missing-weights", ("--image_size", 16), "do not exist"),
        ("bare-state-dict", ("--image_size", 16), "does not record which student it holds"),
        ("taps", ("--image_size", 16, "--taps", "[layer9]"), "has no layer 'layer9'"),
        ("broken", ("--image_size", 16), "none of the 2 images could be read (first: a.png: "),
        (
            "gray-data",
            ("--data.class_path", "repfusion_pl.data.DigitsDataModule"),
            "the student cannot embed train/0000000: student resnet18 was built for 3-channel images",
        ),
    ],
)
def test_bad_input_is_refused_with_one_message_and_nothing_written(
    make, args, message, rgb_imagenet_checkpoint, folder, tmp_path, capsys
):
    weights, out = rgb_imagenet_checkpoint, tmp_path / "out"
    images = () if make is None else ("--images", folder)
    if make == "empty":
        images = ("--images", tmp_path / "nothing")
        (tmp_path / "nothing").mkdir()
    if make == "clutter":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    if make == "missing-weights":
        weights = tmp_path / "nope.ckpt"
    if make == "bare-state-dict":  # weights alone: no arch, stem or channels to build the student from
        weights = tmp_path / "bare.pth"
        torch.save(read_backbone_weights(rgb_imagenet_checkpoint).state_dict, weights)
    if make == "broken":
        images = ("--images", tmp_path / "broken")
        for name in ("a.png", "b.jpg"):
            (tmp_path / "broken").mkdir(exist_ok=True)
            (tmp_path / "broken" / name).write_bytes(b"garbage")
    if make == "gray-data":
        images = ()
    with pytest.raises(SystemExit) as exit_:
        embed(weights, out, *images, *map(str, args))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    if make == "clutter":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()
