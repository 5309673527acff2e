"""`repfusion export --hub-folder` and `ExportOnFitEnd`: folders that timm and torchvision load offline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import distill_command, quiet_trainer
from repfusion_pl import DiffusionTeacher, ExportOnFitEnd, RepFusionDistillation, Student, UniformTimestep
from repfusion_pl.cli import main
from repfusion_pl.students import HubFolderError, export_hub_folder, read_backbone_weights
from repfusion_pl.students import hub as hub_module

HUB_FILES = {"model.safetensors", "config.json", "README.md"}


def front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


def test_a_hub_folder_loads_with_timm_and_torchvision_offline(
    rgb_imagenet_checkpoint, tmp_path, offline_hf_cache
):
    folder = tmp_path / "hub"
    main(["export", str(rgb_imagenet_checkpoint), "--hub-folder", str(folder)])
    assert {p.name for p in folder.iterdir()} == HUB_FILES
    original = read_backbone_weights(rgb_imagenet_checkpoint).state_dict
    overlay = timm.create_model(
        "resnet18",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(folder / "model.safetensors")},
        num_classes=0,
    )
    from_folder = timm.create_model(
        f"local-dir:{folder}", pretrained=True
    )  # config.json + weights, as from the Hub
    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    tv.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    for model in (overlay, from_folder, tv):
        torch.testing.assert_close(
            model.state_dict()["layer3.1.conv2.weight"], original["layer3.1.conv2.weight"]
        )
    assert from_folder.num_classes == 0 and from_folder.pretrained_cfg["mean"] == [0.0, 0.0, 0.0]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert config["pretrained_cfg"]["std"] == [1.0, 1.0, 1.0] and "tag" not in config["pretrained_cfg"]
    assert config["repfusion"]["timm_loadable"] and config["repfusion"]["student"]["stem"] == "imagenet"
    meta = front_matter(folder)
    assert meta["library_name"] == "timm" and meta["license"] is None  # left for the user
    card = (folder / "README.md").read_text()
    for said in (
        "mid_block.resnets.1.conv2",
        "UniformTimestep(max_t=100)",
        "PooledMSELoss",
        "2 optimiser steps",
    ):
        assert said in card, said
    assert re.search(r"drew most t=\d+ \(\d+%\)", card) and re.search(r"torch \d", card)
    assert read_backbone_weights(folder).spec.stem == "imagenet"  # the folder is a `backbone_weights:` too


def test_a_cifar_stem_folder_says_how_to_load_it(gray_cifar_checkpoint, tmp_path):
    folder = export_hub_folder(gray_cifar_checkpoint, tmp_path / "hub", license="mit")
    config = json.loads((folder / "config.json").read_text())
    assert not config["repfusion"]["timm_loadable"]  # timm cannot rebuild the 3x3 stride-1 stem
    assert config["pretrained_cfg"]["input_size"][0] == 1 and config["pretrained_cfg"]["mean"] == [0.0]
    tv = torchvision.models.resnet18()
    tv.conv1, tv.maxpool, tv.fc = nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.Identity(), nn.Identity()
    tv.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    card = (folder / "README.md").read_text()
    assert front_matter(folder)["license"] == "mit" and front_matter(folder)["library_name"] == "pytorch"
    assert "model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)" in card and "local-dir" not in card


def timm_checkpoint(teacher_dir: Path, out: Path, student: Student) -> Path:
    """A two-step distillation checkpoint of any student (conftest's helper makes torchvision ones)."""
    torch.manual_seed(0)
    teacher = DiffusionTeacher(str(teacher_dir))
    module = RepFusionDistillation(teacher, student, sampler=UniformTimestep(100))
    images = torch.rand(8, 3, 16, 16)
    trainer = quiet_trainer(out, max_steps=2)
    trainer.fit(module, DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4))
    trainer.save_checkpoint(out / "timm.ckpt")
    return out / "timm.ckpt"


def test_a_timm_student_round_trips_through_timm(rgb_teacher_dir, tmp_path, offline_hf_cache):
    start = tmp_path / "start.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), start)
    student = Student("test_efficientnet", library="timm", stem="imagenet", weights=str(start))
    folder = export_hub_folder(timm_checkpoint(rgb_teacher_dir, tmp_path, student), tmp_path / "hub")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), student.backbone.eval()(images))
    assert "Initialised from:** file start.safetensors" in (folder / "README.md").read_text()


def test_bad_targets_are_refused_and_nothing_is_half_written(
    rgb_imagenet_checkpoint, tmp_path, capsys, monkeypatch
):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(rgb_imagenet_checkpoint), "--hub-folder", str(busy)])
    assert exit_info.value.code == 2
    assert "holds other files (notes.txt); nothing was written" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(HubFolderError, match="is a file"):
        export_hub_folder(rgb_imagenet_checkpoint, tmp_path / "file")
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "other.ckpt"), "--hub-folder", str(tmp_path / "nope")])
    assert "holds no student backbone" in capsys.readouterr().err and not (tmp_path / "nope").exists()
    with pytest.raises(SystemExit):
        main(["export", str(rgb_imagenet_checkpoint)])
    assert "give an OUTPUT.safetensors file, --hub-folder DIR, or both" in capsys.readouterr().err

    folder = export_hub_folder(rgb_imagenet_checkpoint, tmp_path / "hub")  # an earlier export is replaced
    before = (folder / "model.safetensors").read_bytes()

    def broken_card(*args, **kwargs):
        raise RuntimeError("killed while writing the card")

    monkeypatch.setattr(hub_module, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="killed"):
        export_hub_folder(rgb_imagenet_checkpoint, folder)
    assert (folder / "model.safetensors").read_bytes() == before  # the earlier export is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    monkeypatch.undo()
    export_hub_folder(rgb_imagenet_checkpoint, folder)
    assert {p.name for p in folder.iterdir()} == HUB_FILES


def test_the_callback_refuses_a_busy_folder_before_training(tmp_path):
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "data.csv").write_text("1,2")
    trainer = SimpleNamespace(checkpoint_callback=None, default_root_dir=str(tmp_path))
    with pytest.raises(HubFolderError, match="holds other files"):
        ExportOnFitEnd(dirpath=str(tmp_path)).on_fit_start(trainer, None)


@pytest.mark.parametrize(
    "run", [["--trainer.fast_dev_run=1"], ["--trainer.max_steps=2", "--trainer.limit_val_batches=1"]]
)
def test_export_on_fit_end_from_yaml(gray_teacher_dir, tmp_path, run, offline_hf_cache):
    main(distill_command(gray_teacher_dir, tmp_path, ("distill_tiny.yaml", "export_tiny.yaml"), *run))
    last = tmp_path / "hub" / "last"
    assert {p.name for p in last.iterdir()} == HUB_FILES and not (tmp_path / "hub" / ".fit-end.ckpt").exists()
    card = (last / "README.md").read_text()
    assert front_matter(last)["license"] == "apache-2.0"
    assert re.search(r"`DigitsDataModule`, [\d,]+ training images, 8x8 px", card)
    assert re.search(
        r"PolicyTimestep\(reward=.*\)`; in the last epoch \(\d+ draws\) it drew most t=\d+", card
    )
    assert re.search(r"student 0\.\d+ vs a random-init copy 0\.\d+", card)
    weights = read_backbone_weights(last)
    assert weights.spec.stem == "cifar" and weights.spec.in_channels == 1
    best = tmp_path / "hub" / "best"
    assert best.is_dir() == ("--trainer.max_steps=2" in run)  # fast_dev_run keeps no checkpoint


def test_export_reads_once_writes_both_and_a_failed_push_leaves_the_folder_naming_its_repo(
    rgb_imagenet_checkpoint, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the upload fails at once, as offline
    reads = []
    real_read = hub_module.read_checkpoint
    monkeypatch.setattr(hub_module, "read_checkpoint", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    folder, single = tmp_path / "hub", tmp_path / "b.safetensors"
    args = [
        str(rgb_imagenet_checkpoint),
        str(single),
        "--hub-folder",
        str(folder),
        "--push-to-hub",
        "me/student",
    ]
    with pytest.raises(SystemExit):
        main(["export", *args])
    assert "could not upload" in capsys.readouterr().err and len(reads) == 1
    assert {p.name for p in folder.iterdir()} == HUB_FILES
    assert 'timm.create_model("hf-hub:me/student"' in (folder / "README.md").read_text()
    assert load_file(single).keys() == load_file(folder / "model.safetensors").keys()
    assert read_backbone_weights(single).provenance["exported_from"] == str(rgb_imagenet_checkpoint)
