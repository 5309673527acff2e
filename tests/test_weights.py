from __future__ import annotations

import pickle

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from repfusion_pl import BackboneSpec
from repfusion_pl.checkpoints import CheckpointError
from repfusion_pl.cli import main
from repfusion_pl.students.weights import (
    BackboneWeights,
    export_backbone,
    load_backbone_weights,
    read_backbone_weights,
)


def test_checkpoint_records_provenance_and_holds_the_backbone(rgb_imagenet_checkpoint):
    weights = read_backbone_weights(rgb_imagenet_checkpoint)
    assert weights.provenance["student"] == {
        "arch": "resnet18",
        "library": "torchvision",
        "stem": "imagenet",
        "in_channels": 3,
        "taps": ["layer4"],
    }
    assert weights.spec == BackboneSpec("resnet18", "torchvision", "imagenet", 3)
    assert weights.provenance["teacher"]["layers"] == ["mid_block.resnets.1.conv2"]
    assert "conv1.weight" in weights.state_dict and not any(k.startswith("fc.") for k in weights.state_dict)


def test_export_loads_strictly_into_torchvision_timm_and_smp(rgb_imagenet_checkpoint, tmp_path):
    out = tmp_path / "backbone.safetensors"
    main(["export", str(rgb_imagenet_checkpoint), str(out)])
    exported = load_file(out)
    original = read_backbone_weights(rgb_imagenet_checkpoint).state_dict
    assert exported.keys() == original.keys()

    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    tv.load_state_dict(exported, strict=True)
    tm = timm.create_model("resnet18", pretrained=False, num_classes=0)
    tm.load_state_dict(exported, strict=True)
    encoder = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None).encoder
    encoder.load_state_dict(exported, strict=True)
    for model in (tv, tm, encoder):
        torch.testing.assert_close(
            model.state_dict()["layer3.1.conv2.weight"], original["layer3.1.conv2.weight"]
        )
    assert read_backbone_weights(out).spec.stem == "imagenet"


def test_cifar_stem_export_loads_into_torchvision_with_the_same_stem(gray_cifar_checkpoint, tmp_path):
    exported = load_file(export_backbone(gray_cifar_checkpoint, tmp_path / "b.safetensors"))
    tv = torchvision.models.resnet18()
    tv.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    tv.maxpool, tv.fc = nn.Identity(), nn.Identity()
    tv.load_state_dict(exported, strict=True)


def test_a_mismatched_architecture_fails_with_the_key_lists(rgb_imagenet_checkpoint, gray_cifar_checkpoint):
    resnet34 = torchvision.models.resnet34()
    resnet34.fc = nn.Identity()
    with pytest.raises(
        ValueError, match=r"(?s)made by a resnet18/imagenet.*missing keys \(96\): layer1\.2\.bn1\.bias"
    ):
        load_backbone_weights(resnet34, read_backbone_weights(rgb_imagenet_checkpoint))
    resnet18 = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"missing keys \(2\): fc\.bias, fc\.weight"):
        load_backbone_weights(resnet18, read_backbone_weights(rgb_imagenet_checkpoint))
    resnet18.fc = nn.Identity()
    with pytest.raises(
        ValueError, match=r"shape mismatches \(1\): conv1\.weight \(64, 1, 3, 3\) vs \(64, 3, 7, 7\)"
    ):
        load_backbone_weights(resnet18, read_backbone_weights(gray_cifar_checkpoint))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra"):
        weights = read_backbone_weights(rgb_imagenet_checkpoint)
        load_backbone_weights(resnet18, BackboneWeights({**weights.state_dict, "extra": torch.zeros(1)}))


def test_missing_truncated_and_foreign_files_are_explained(tmp_path, rgb_imagenet_checkpoint):
    with pytest.raises(FileNotFoundError, match=r"repfusion export"):
        read_backbone_weights(tmp_path / "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(rgb_imagenet_checkpoint.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_backbone_weights(truncated)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    unreadable = r"cannot read .*broken\.safetensors as safetensors.*repfusion export"
    with pytest.raises(CheckpointError, match=unreadable):
        read_backbone_weights(broken)
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no student backbone"):
        read_backbone_weights(tmp_path / "other.ckpt")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": _RunsCode()}))
    with pytest.raises(ValueError, match="weights_only=True"):
        read_backbone_weights(path)
    assert "this pickle ran code" not in capsys.readouterr().out
