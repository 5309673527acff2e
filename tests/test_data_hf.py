"""HFImageDataModule on Hugging Face data the tests make (parquet, save_to_disk, imagefolder, a cached hub
id), through the real CLI; its exact mid-epoch resume and DDP shares; the teacher cache from it and from a
data module of the user's own; and one clear message for each bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, seed_everything
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from conftest import CONF, ROOT, fit_with_checkpoints
from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student
from repfusion_pl.checkpoints import read_checkpoint
from repfusion_pl.cli import main
from repfusion_pl.data import HFImageDataModule

EXAMPLE = ROOT / "configs" / "examples" / "hf-distill.yaml"
CLASSES = ["cat", "dog"]


def rows(count: int = 40, seed: int = 0, labelled: bool = True) -> datasets.Dataset:
    """``count`` random 12x14 RGB images in an ``img`` column (an ``Image()`` feature), labels alternating."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)) for _ in range(count)]
    columns: dict = {"img": images}
    features: dict = {"img": datasets.Image()}
    if labelled:
        columns["label"] = [i % 2 for i in range(count)]
        features["label"] = datasets.ClassLabel(names=CLASSES)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def parquet(folder: Path, data: datasets.Dataset | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (data if data is not None else rows()).to_parquet(folder / "data.parquet")
    return folder / "data.parquet"


def saved(folder: Path) -> Path:
    """A ``save_to_disk`` folder with ``train`` (40 images) and ``test`` (8) splits."""
    datasets.DatasetDict(train=rows(), test=rows(8, seed=1)).save_to_disk(str(folder / "arrow"))
    return folder / "arrow"


def imagefolder(folder: Path) -> Path:
    """``train/<class>/`` and ``test/<class>/`` PNGs, as ``datasets``' imagefolder reads them."""
    for split, data in (("train", rows(24)), ("test", rows(8, seed=1))):
        for index, row in enumerate(data):
            (folder / "images" / split / CLASSES[row["label"]]).mkdir(parents=True, exist_ok=True)
            row["img"].save(folder / "images" / split / CLASSES[row["label"]] / f"{index}.png")
    return folder / "images"


def module(path: Path, tmp_path: Path, **options) -> HFImageDataModule:
    defaults = dict(image_column="img", image_size=8, batch_size=4, num_workers=0, test_split=None)
    return HFImageDataModule(str(path), cache_dir=str(tmp_path / "hf-cache"), **{**defaults, **options})


def fit_args(path: Path | None, teacher: Path, root: Path, *extra: str) -> list[str]:
    """``repfusion fit`` on configs/examples/hf-distill.yaml + tests/conf/hf_tiny.yaml, over ``path``.

    Without ``path`` the data module is left out: ``extra`` brings one.
    """
    data = [f"--data.init_args.path={path}", f"--data.init_args.cache_dir={root / 'hf-cache'}"]
    return [
        "fit",
        "--config",
        str(EXAMPLE),
        "--config",
        str(CONF / "hf_tiny.yaml"),
        *(data if path is not None else []),
        f"--model.init_args.teacher.init_args.source={teacher}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
        *extra,
    ]


@pytest.mark.parametrize(
    ("layout", "extra"),
    [
        (parquet, ["--data.init_args.test_split=null"]),  # one file: a train split only
        (saved, []),  # the example's own train and test splits
        (imagefolder, ["--data.init_args.image_column=image"]),
    ],
    ids=["parquet", "save_to_disk", "imagefolder"],
)
def test_each_local_layout_fits_through_the_cli(rgb_teacher_dir, tmp_path, layout, extra):
    main(fit_args(layout(tmp_path), rgb_teacher_dir, tmp_path, *extra))


def test_a_hub_id_is_read_from_the_local_cache_only(offline_hf_cache, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hf_cache / "datasets--someone--tiny-images"
    parquet(repo / "snapshots" / commit / "data", rows(12)).rename(
        repo / "snapshots" / commit / "data" / "train-00000-of-00001.parquet"
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    data = module(Path("someone/tiny-images"), tmp_path, val_fraction=0.25, test_fraction=0.0)
    data.setup("fit")
    assert (len(data.splits["train"]), len(data.splits["val"])) == (9, 3) and data.classes == CLASSES


def test_a_hub_id_not_in_the_cache_is_one_message_with_the_download_command(
    offline_hf_cache, rgb_teacher_dir, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(Path("someone/not-fetched"), rgb_teacher_dir, tmp_path))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "hf download --repo-type dataset someone/not-fetched" in err and "never downloads" in err


def test_splits_come_from_the_dataset_or_a_seeded_cut(tmp_path):
    arrow = saved(tmp_path)
    own = module(arrow, tmp_path, val_split="test")
    own.setup("fit")
    assert [len(own.splits[s]) for s in ("train", "val", "test")] == [40, 8, 8]  # val doubles as test
    assert own.splits["test"] is own.splits["val"]  # one dataset, its labels read once
    cut = module(arrow, tmp_path, val_fraction=0.25, test_split="test")
    cut.setup("fit")
    assert [len(cut.splits[s]) for s in ("train", "val", "test")] == [30, 10, 8]
    assert cut.classes == CLASSES and cut.num_classes == 2
    again, other = (
        module(arrow, tmp_path, val_fraction=0.25),
        module(arrow, tmp_path, val_fraction=0.25, seed=1),
    )
    for data in (again, other):
        data.setup("fit")
    first = [cut.splits["val"].plain(i) for i in range(3)]
    assert all(torch.equal(a, again.splits["val"].plain(i)) for i, a in enumerate(first))
    assert not all(torch.equal(a, other.splits["val"].plain(i)) for i, a in enumerate(first))
    few = module(arrow, tmp_path, labels_per_class=3, grayscale=True)
    few.setup("fit")
    assert sorted(few.splits["train"].labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert few.in_channels == 1 and few.splits["train"][0][0].shape == (1, 8, 8)


@pytest.mark.parametrize("options", [{"label_column": None}, {"labels": False}])
def test_without_labels_batches_are_images_alone(tmp_path, options):
    data = module(saved(tmp_path), tmp_path, **options)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 3, 8, 8) and data.num_classes is None


def test_ddp_ranks_read_disjoint_shares_that_cover_the_training_split(tmp_path):
    data = module(parquet(tmp_path), tmp_path, augment=False, val_fraction=0.2, test_fraction=0.0)
    data.setup("fit")
    shares = []
    for rank in (0, 1):  # what each process of a 2-process DDP run reads (the trainer's rank and world)
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        shares.append({image.numpy().tobytes() for images, _ in data.train_dataloader() for image in images})
    train = data.splits["train"]
    everything = {train.plain(i).numpy().tobytes() for i in range(len(train))}
    assert len(shares[0]) == len(shares[1]) == 16 and not shares[0] & shares[1]
    assert shares[0] | shares[1] == everything


def fit_hf(teacher_dir: Path, root: Path, path: Path, max_steps: int = -1, ckpt_path: Path | None = None):
    """Two epochs of four augmented batches in two workers, a checkpoint every three steps (mid-epoch)."""
    seed_everything(0)
    model = RepFusionDistillation(
        DiffusionTeacher(str(teacher_dir)), Student("resnet18", in_channels=3), PolicyTimestep(2)
    )
    # datasets' prepared arrow files beside the run's folder, not in it (its checkpoints' folder)
    data = module(path, root.parent, batch_size=8, num_workers=2, val_fraction=0.2, test_fraction=0.0)
    return model, fit_with_checkpoints(model, data, root, max_steps, ckpt_path)


def test_mid_epoch_resume_continues_the_same_batches_and_augmentation(rgb_teacher_dir, tmp_path):
    path = parquet(tmp_path / "data")
    straight, straight_telemetry = fit_hf(rgb_teacher_dir, tmp_path / "straight", path)
    fit_hf(rgb_teacher_dir, tmp_path / "first", path, max_steps=7)
    first = read_checkpoint(tmp_path / "first" / "last.ckpt")
    assert first["global_step"] == 6  # two batches into epoch 1, wherever the workers had got to
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    resumed, resumed_telemetry = fit_hf(
        rgb_teacher_dir, tmp_path / "second", path, ckpt_path=tmp_path / "first" / "last.ckpt"
    )
    assert resumed_telemetry.history == straight_telemetry.history
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def cached_fit(args: list[str], cache: Path) -> list[str]:
    grid = ["--model.init_args.sampler.init_args.grid=[0, 100]"]
    cached = [
        "--config",
        str(CONF / "cached_teacher.yaml"),
        f"--model.init_args.teacher.init_args.cache={cache}",
    ]
    return [*args, *cached, *grid]


def cache_args(args: list[str], cache: Path) -> list[str]:
    return ["cache", *args[1:], f"--cache.dir={cache}", "--cache.t_grid=[0, 100]", "--cache.shard_size=16"]


def test_the_cache_builds_from_hf_data_through_the_cli_and_a_cached_run_trains(rgb_teacher_dir, tmp_path):
    args = fit_args(saved(tmp_path), rgb_teacher_dir, tmp_path, "--data.init_args.val_fraction=0.2")
    main(cache_args(args, tmp_path / "cache"))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["data"]["data_module"] == "HFImageDataModule"
    assert manifest["splits"] == {"train": {"images": 32, "views": 2}, "val": {"images": 8, "views": 1}}
    main(cached_fit(args, tmp_path / "cache"))


class OwnImages(LightningDataModule):
    """A data module of the user's own making, none of the package's machinery: 3x8x8 images.

    Args:
        kind: ``pairs``: (image, label) tensors; ``stream``: an IterableDataset; ``pil``: PIL images.
    """

    def __init__(self, kind: str = "pairs") -> None:
        super().__init__()
        self.kind = kind

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(24, 3, 8, 8, generator=generator)
        self.labels = torch.arange(24) % 2

    def train_dataloader(self) -> DataLoader:
        if self.kind == "stream":
            return DataLoader(Stream(self.images), batch_size=4)
        if self.kind == "pil":
            return DataLoader([Image.new("RGB", (8, 8))] * 24, batch_size=4)
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=4, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images[:8], self.labels[:8]), batch_size=4)


class Stream(IterableDataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images  # an in-memory tensor, as the package's own datasets keep: still refused

    def __iter__(self):
        return iter(self.images)


def own_args(teacher: Path, root: Path, kind: str = "pairs") -> list[str]:
    """``repfusion fit`` on the example config with `OwnImages` in place of its data module."""
    own = root / "own.yaml"
    own.write_text(f"data:\n  class_path: test_data_hf.OwnImages\n  init_args: {{kind: {kind}}}\n")
    return fit_args(None, teacher, root, "--config", str(own))


def test_the_cache_builds_from_a_data_module_of_the_users_own_and_serves_it(rgb_teacher_dir, tmp_path):
    args = own_args(rgb_teacher_dir, tmp_path)
    main(cache_args(args, tmp_path / "cache"))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["data"]["data_module"] == "OwnImages" and manifest["splits"]["train"]["images"] == 24
    main(cached_fit(args, tmp_path / "cache"))  # its loaders replaced by the cached views', labels kept


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("stream", r"OwnImages.train_dataloader\(\) is a Stream, which has no len\(\) and \[index\]"),
        ("pil", r"gives an Image; a teacher-target cache needs each item to be a float \(C, H, W\) image"),
    ],
    ids=["stream", "pil"],
)
def test_the_cache_refuses_a_data_module_it_cannot_read_by_index(
    rgb_teacher_dir, tmp_path, capsys, kind, said
):
    with pytest.raises(SystemExit) as exit_info:
        main(cache_args(own_args(rgb_teacher_dir, tmp_path, kind), tmp_path / "cache"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert re.search(said, err), err
    assert not (tmp_path / "cache").exists()  # nothing written


def not_images(folder: Path) -> Path:
    return parquet(folder, datasets.Dataset.from_dict({"img": [np.zeros((4, 4, 3), np.uint8)], "label": [0]}))


def empty(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


BAD_INPUTS = {
    "no such column": (
        parquet,
        {"image_column": "picture"},
        r"'picture' is not a column .*\(its columns: img, label\)",
    ),
    "not images": (not_images, {}, r"image_column 'img' of .* holds List\(.*\), not images .*cast_column"),
    "no labels": (
        lambda p: parquet(p, rows(4, labelled=False)),
        {},
        r"labels were asked for \(label_column 'label'\) but .* has no such column .*label_column: null",
    ),
    "labels not classes": (
        lambda p: parquet(p, rows(4).cast_column("label", datasets.Value("string"))),
        {},
        r"label_column 'label' of .* holds Value\('string'\), not class labels",
    ),
    "no such split": (
        saved,
        {"val_split": "validation"},
        r"'validation' is not a split of .*\(its splits: train, test\)",
    ),
    "no path": (lambda p: p / "nowhere" / "x.parquet", {}, r"does not exist \(no file or folder"),
    "empty folder": (empty, {}, r"no dataset at"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_is_one_clear_message(tmp_path, case):
    make, options, said = BAD_INPUTS[case]
    error = FileNotFoundError if case in ("no path", "empty folder") else ValueError
    with pytest.raises(error, match=said):
        module(make(tmp_path / "data"), tmp_path, **options)


def test_the_manuals_example_is_the_shipped_config():
    import yaml

    page = (ROOT / "docs" / "data.md").read_text()
    block = page.split("<!-- snippet: on configs/examples/hf-distill.yaml -->\n```yaml\n", 1)[1]
    assert yaml.safe_load(block.split("```", 1)[0]) == yaml.safe_load(EXAMPLE.read_text())
