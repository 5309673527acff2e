"""Students from pretrained weights: the local cache only, strict loads, one clear message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from conftest import cache_hub_repo, distill_command
from repfusion_pl import Student
from repfusion_pl.cli import main
from repfusion_pl.students import PretrainedWeightsError, export_backbone


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache (torchvision's downloads)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def cache_timm_weights(cache: Path, name: str) -> dict[str, torch.Tensor]:
    """timm's ``name`` (random, with its head) laid out in the hub cache as a download would be."""
    state = timm.create_model(name.split(".")[0]).state_dict()
    cache_hub_repo(cache, f"timm/{name}", lambda folder: save_file(state, folder / "model.safetensors"))
    return state


def test_timm_pretrained_weights_come_from_the_hub_cache(offline_hf_cache, torch_home):
    saved = cache_timm_weights(offline_hf_cache, "test_resnet.r160_in1k")
    student = Student("test_resnet", library="timm", stem="imagenet", pretrained=True)
    torch.testing.assert_close(
        student.backbone.state_dict()["layer2.0.conv1.weight"], saved["layer2.0.conv1.weight"]
    )
    assert student.initialisation == "timm test_resnet.r160_in1k"
    gray = Student("test_resnet", library="timm", stem="imagenet", in_channels=1, pretrained=True)
    stem = gray.backbone.state_dict()["conv1.0.weight"]
    torch.testing.assert_close(stem, saved["conv1.0.weight"].sum(dim=1, keepdim=True))  # timm adapts in_chans
    assert "adapted to 1 channels by timm" in gray.initialisation


def test_the_cifar_stem_keeps_every_pretrained_layer_but_the_first_conv(offline_hf_cache, torch_home):
    saved = cache_timm_weights(offline_hf_cache, "test_efficientnet.r160_in1k")
    with pytest.warns(UserWarning, match=r"first conv fresh: the cifar stem's random 3x3 stride-1 conv"):
        student = Student("test_efficientnet", library="timm", stem="cifar", pretrained=True)
    own = student.backbone.state_dict()
    assert own["conv_stem.weight"].shape == (24, 3, 3, 3) and student.backbone.conv_stem.stride == (1, 1)
    assert not torch.equal(own["conv_stem.weight"], saved["conv_stem.weight"])
    for key in [k for k in own if k.startswith("blocks.")]:
        torch.testing.assert_close(own[key], saved[key])


def test_torchvision_pretrained_weights_come_from_the_torch_hub_cache(torch_home):
    torch_home.mkdir(parents=True)
    saved = torchvision.models.mobilenet_v2().state_dict()
    torch.save(saved, torch_home / "mobilenet_v2-7ebf99e0.pth")
    student = Student("mobilenet_v2", stem="imagenet", pretrained=True)
    own = student.backbone.state_dict()
    torch.testing.assert_close(own["features.3.conv.1.0.weight"], saved["features.3.conv.1.0.weight"])
    assert student.initialisation == "torchvision MobileNet_V2_Weights.IMAGENET1K_V2"
    gray = Student("mobilenet_v2", stem="imagenet", in_channels=1, pretrained=True)  # adapted as timm does
    torch.testing.assert_close(
        gray.backbone.features[0][0].weight, saved["features.0.0.weight"].sum(1, keepdim=True)
    )


def test_a_download_cut_short_is_named_with_the_fix(torch_home):
    torch_home.mkdir(parents=True)
    whole = torch_home / "whole.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), whole)
    (torch_home / "mobilenet_v2-7ebf99e0.pth").write_bytes(whole.read_bytes()[:5000])
    with pytest.raises(
        PretrainedWeightsError, match=r"cannot read .*mobilenet_v2-7ebf99e0\.pth.*download it again"
    ):
        Student("mobilenet_v2", stem="imagenet", pretrained=True)


def test_weights_absent_from_the_cache_name_the_download(offline_hf_cache, torch_home):
    with pytest.raises(
        PretrainedWeightsError, match=r"not in the local cache.*`hf download timm/test_resnet\.r160_in1k`"
    ):
        Student("test_resnet", library="timm", stem="imagenet", pretrained=True)
    absent = r"resnet18-f37072fd\.pth is absent.*torchvision\.models\.resnet18\(weights='DEFAULT'\)"
    with pytest.raises(PretrainedWeightsError, match=absent):
        Student("resnet18", pretrained=True)
    with pytest.raises(PretrainedWeightsError, match=r"timm has no pretrained weights for 'resnet200'"):
        Student("resnet200", library="timm", pretrained=True)
    with pytest.raises(ValueError, match=r"unknown timm student 'resnet18x'"):
        Student("resnet18x", library="timm", pretrained=True)


def test_a_fit_config_with_uncached_weights_fails_with_the_download_command(
    gray_teacher_dir, tmp_path, torch_home, capsys
):
    student = "--model.init_args.student.init_args"
    args = distill_command(gray_teacher_dir, tmp_path, "distill_tiny.yaml", f"{student}.pretrained=true")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.fast_dev_run=1"])
    assert exit_info.value.code != 0
    assert "torchvision.models.resnet18(weights='DEFAULT')" in capsys.readouterr().err


def test_weights_from_a_file_load_strictly(gray_cifar_checkpoint, tmp_path):
    exported = export_backbone(gray_cifar_checkpoint, tmp_path / "b.safetensors")
    for source in (gray_cifar_checkpoint, exported):
        student = Student("resnet18", stem="cifar", in_channels=1, weights=str(source))
        assert student.initialisation == f"file {source.name}"
    torch.testing.assert_close(
        student.backbone.state_dict()["layer4.1.conv2.weight"],
        torch.load(gray_cifar_checkpoint, weights_only=True)["state_dict"][
            "student.backbone.layer4.1.conv2.weight"
        ],
    )
    made_by = (
        r"made by a torchvision resnet18 with the cifar stem and 1 input channels, but this student is a "
    )
    with pytest.raises(ValueError, match=made_by + "torchvision resnet34"):
        Student("resnet34", stem="cifar", in_channels=1, weights=str(exported))
    # A bare torchvision state dict, head included: the head's keys go, all the others must fit.
    bare = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bare)
    assert Student("resnet18", stem="imagenet", weights=str(bare)).initialisation == "file resnet18.pth"
    with pytest.raises(
        ValueError, match=r"(?s)do not fit the student resnet34.*missing keys.*a torchvision resnet34"
    ):
        Student("resnet34", stem="imagenet", weights=str(bare))
    with pytest.raises(ValueError, match=r"pretrained: true.*not both"):
        Student("resnet18", pretrained=True, weights=str(bare))
