"""Every recipe of configs/paper runs: fast_dev_run on fixture data in its dataset's layout, tiny teachers.

Only what a CPU test must change is overridden (device, precision, batch and image size, the teacher,
the distilled weights); every optimiser, schedule, loss, head and augmentation stays the recipe's.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from adm_reference import random_reference
from conftest import ROOT, make_tiny_unet, save_pipeline
from repfusion_pl.cli import main
from repfusion_pl.teachers.adm.convert import convert_adm
from test_convert_adm import TINY
from test_data_classification import write_cifar, write_image, write_tiny_imagenet
from test_data_dense import write_celeba, write_wflw

CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--trainer.fast_dev_run=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=2",
]


def celeba_images(root: Path) -> Path:
    """CelebA-HQ as the distillation recipes read it: a folder of face images, no labels."""
    for face in range(4):
        write_image(root / f"{face}.jpg", (40 * face, 100, 200), size=(96, 96), seed=face)
    return root


#: A guided-diffusion ImageNet model shrunk to 32 px and 32/64 channels: the paper's Tiny-ImageNet
#: teacher's architecture (scale-shift norm, ResBlock resampling, new attention order, learned sigma,
#: all 1000 ImageNet classes), as `repfusion convert-adm` converts it.
TINY_ADM = dataclasses.replace(TINY, image_size=32, channel_mult=(1, 2), num_classes=1000)
#: Real Tiny-ImageNet wnids, in an unsorted wnids.txt order (the data module's labels follow it).
TINY_IMAGENET_WNIDS = ["n02124075", "n01443537", "n07920052"]
CLASS_MAP = ROOT / "configs/paper/tinyimagenet-to-imagenet.json"


def converted_adm(root: Path) -> Path:
    checkpoint = root / "64x64_diffusion.pt"
    torch.save(random_reference(TINY_ADM).state_dict(), checkpoint)
    return convert_adm(checkpoint, root / "guided-diffusion-imagenet64", TINY_ADM)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Tiny RGB teachers: 32 px (pooled losses), 64 px (dense losses: matchable maps), a converted ADM."""
    root = tmp_path_factory.mktemp("recipe-teachers")
    return {
        "rgb32": save_pipeline(root / "rgb32", make_tiny_unet(3, sample_size=32)),
        "rgb64": save_pipeline(root / "rgb64", make_tiny_unet(3, sample_size=64)),
        "adm": converted_adm(root),
    }


def distill(teacher: str, *extra: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda teachers: [f"--model.init_args.teacher.init_args.source={teachers[teacher]}", *extra]


def task(*extra: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda teachers: [*extra]


#: recipe -> (writes the dataset fixture under a root and returns it, overrides given the teachers)
RECIPES: dict[str, tuple[Callable[[Path], Path], Callable[[dict[str, Path]], list[str]]]] = {
    "cifar10-distill.yaml": (lambda r: (write_cifar(r), r)[1], distill("rgb32")),
    "cifar10-classify.yaml": (
        lambda r: (write_cifar(r), r)[1],
        task("--model.init_args.backbone_weights=null"),
    ),
    # The recipe's own class map and class_names (data/tiny-imagenet-200/wnids.txt, relative to the run).
    "tinyimagenet-distill.yaml": (
        lambda r: write_tiny_imagenet(r / "tiny-imagenet-200", wnids=TINY_IMAGENET_WNIDS),
        distill(
            "adm",
            f"--model.init_args.teacher.init_args.class_label_map={CLASS_MAP}",
            "--data.init_args.image_size=32",
        ),
    ),
    "tinyimagenet-classify.yaml": (
        write_tiny_imagenet,
        task("--model.init_args.backbone_weights=null", "--data.init_args.image_size=32"),
    ),
    "celebahq-distill.yaml": (celeba_images, distill("rgb64", "--data.init_args.image_size=64")),
    "celebahq-distill-resnet50.yaml": (celeba_images, distill("rgb64", "--data.init_args.image_size=64")),
    "celebahq-distill-hrnet18.yaml": (celeba_images, distill("rgb64", "--data.init_args.image_size=64")),
    "celebamask-parsing.yaml": (
        write_celeba,
        task(
            "--model.init_args.backbone_weights=null",
            "--data.init_args.image_size=64",
            "--data.init_args.augmentation.crop_size=48",
        ),
    ),
    "celebamask-parsing-resnet50.yaml": (
        write_celeba,
        task(
            "--model.init_args.backbone_weights=null",
            "--data.init_args.image_size=64",
            "--data.init_args.augmentation.crop_size=48",
        ),
    ),
    "wflw-landmarks.yaml": (
        write_wflw,
        task(
            "--model.init_args.backbone_weights=null",
            "--data.init_args.image_size=64",
            "--model.init_args.image_size=64",
        ),
    ),
    "wflw-landmarks-resnet50.yaml": (
        write_wflw,
        task(
            "--model.init_args.backbone_weights=null",
            "--data.init_args.image_size=64",
            "--model.init_args.image_size=64",
        ),
    ),
    "wflw-landmarks-hrnet18.yaml": (
        write_wflw,
        task(
            "--model.init_args.backbone_weights=null",
            "--data.init_args.image_size=64",
            "--model.init_args.image_size=64",
        ),
    ),
}


def test_every_recipe_has_a_fast_dev_run_here():
    assert set(RECIPES) == {p.name for p in (ROOT / "configs" / "paper").glob("*.yaml")}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_on_fixture_data_of_its_layout(recipe, teachers, tmp_path, monkeypatch):
    # CIFAR-10's md5 check cannot pass on fixture batches; reading and decoding stay torchvision's.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    # The recipes write under artifacts/paper/ (relative): here that is the test's own folder.
    monkeypatch.chdir(tmp_path)
    write_data, overrides = RECIPES[recipe]
    data_root = write_data(tmp_path / "data")
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "paper" / recipe),
            *CPU,
            f"--data.init_args.root={data_root}",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            *overrides(teachers),
        ]
    )
    assert not (ROOT / "artifacts" / "paper").exists(), "a recipe test wrote into the repository"


def test_tiny_imagenet_recipe_conditions_each_image_on_its_imagenet_class(teachers, tmp_path, monkeypatch):
    import yaml

    from repfusion_pl import DiffusionTeacher

    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository, like every config
    recipe = yaml.safe_load((ROOT / "configs/paper/tinyimagenet-distill.yaml").read_text())
    options = recipe["model"]["init_args"]["teacher"]["init_args"]
    wnids = write_tiny_imagenet(tmp_path / "tiny", wnids=TINY_IMAGENET_WNIDS) / "wnids.txt"
    teacher = DiffusionTeacher(
        str(teachers["adm"]), class_label_map=options["class_label_map"], class_names=str(wnids)
    )
    # Egyptian cat, goldfish, espresso: ImageNet-1k 285, 1, 967.
    assert teacher.teacher_labels(torch.tensor([0, 1, 2])).tolist() == [285, 1, 967]
    assert options["source"] == "models/guided-diffusion-imagenet64"


def docs_recipe_rows() -> dict[str, dict[str, str]]:
    """The "Paper recipes" table of docs/recipes.md, by recipe file."""
    page = (ROOT / "docs" / "recipes.md").read_text()
    section = page.split("## Paper recipes", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| `")]
    header = ["recipe", "row", "backbone", "optimiser", "schedule", "batch", "length", "differences"]
    rows = {}
    for line in lines:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")), strict=True))
        rows[cells["recipe"].strip("`")] = cells
    return rows


def test_the_docs_recipe_table_matches_the_configs():
    import yaml

    rows = docs_recipe_rows()
    assert set(rows) == set(RECIPES)
    for recipe, row in rows.items():
        config = yaml.safe_load((ROOT / "configs" / "paper" / recipe).read_text())
        optimiser = config["model"]["init_args"]["optimizer"]["init_args"]
        stated = dict(re.findall(r"(lr|wd) ([0-9.e-]+)", row["optimiser"]))
        assert float(stated["lr"]) == optimiser["lr"], recipe
        assert float(stated.get("wd", 0)) == optimiser.get("weight_decay", 0), recipe
        assert ("Nesterov" in row["optimiser"]) == bool(optimiser.get("nesterov")), recipe
        assert int(row["batch"]) == config["data"]["init_args"]["batch_size"], recipe
        trainer = config["trainer"]
        length = (
            f"{trainer['max_epochs']} epochs"
            if "max_epochs" in trainer
            else f"{trainer['max_steps'] // 1000}k iterations"
        )
        assert row["length"] == length, recipe
        schedule = config["model"]["init_args"].get("schedule", {})
        assert ("per step" in row["schedule"]) == (schedule.get("interval") == "step"), recipe
        warmup = schedule.get("warmup_steps", 0)
        assert (f"{warmup:,} warm-up steps" in row["schedule"]) == bool(warmup), recipe
