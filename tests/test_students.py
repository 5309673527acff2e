from __future__ import annotations

import pytest
import torch

from repfusion_pl.students import Student


@pytest.mark.parametrize(
    ("arch", "stem", "channels", "side"),
    [
        ("resnet18", "cifar", 512, 2),
        ("resnet18", "imagenet", 512, 1),
        ("resnet34", "cifar", 512, 2),
        ("resnet50", "cifar", 2048, 2),
        ("mobilenet_v2", "cifar", 1280, 1),
    ],
)
def test_torchvision_students_last_stage_shapes(arch, stem, channels, side):
    student = Student(arch, stem=stem, in_channels=1)
    feats = student(torch.rand(2, 1, 16, 16))
    assert list(feats) == student.taps
    assert tuple(next(iter(feats.values())).shape) == (2, channels, side, side)


def test_cifar_stem_keeps_resolution_the_imagenet_stem_quarters():
    cifar = Student("resnet18", stem="cifar", taps=["layer1"])
    imagenet = Student("resnet18", stem="imagenet", taps=["layer1"])
    x = torch.rand(1, 3, 32, 32)
    assert cifar(x)["layer1"].shape[-1] == 32 and imagenet(x)["layer1"].shape[-1] == 8


@pytest.mark.parametrize(
    ("arch", "stem"), [("resnet18", "cifar"), ("resnet18", "imagenet"), ("mobilenetv2_100", "cifar")]
)
def test_timm_students(arch, stem):
    student = Student(arch, library="timm", stem=stem, in_channels=2)
    feats = student(torch.rand(2, 2, 32, 32))
    assert next(iter(feats.values())).dim() == 4


def test_several_taps_and_unreached_layers_are_frozen():
    student = Student("resnet18", taps=["layer2", "layer3"])
    feats = student(torch.rand(2, 3, 16, 16))
    assert [f.shape[1] for f in feats.values()] == [128, 256]
    frozen = {n.split(".")[1] for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {"layer4"}
    assert all(p.requires_grad for n, p in student.named_parameters() if "layer3" in n)


def test_unknown_arch_and_tap_suggest_names():
    with pytest.raises(ValueError, match=r"did you mean 'resnet18'"):
        Student("resnet81")
    with pytest.raises(ValueError, match=r"no layer 'layer5'.*'layer4'"):
        Student("resnet18", taps=["layer5"])
    with pytest.raises(ValueError, match=r"nearest timm names"):
        Student("resnet18x", library="timm")


def test_wrong_input_channels_name_the_setting():
    student = Student("resnet18", in_channels=3)
    with pytest.raises(
        ValueError, match=r"3-channel images but the batch has 1; set the student's in_channels to 1"
    ):
        student(torch.rand(1, 1, 16, 16))


def test_feature_shapes_leave_batchnorm_statistics_alone():
    student = Student("resnet18")
    before = student.backbone.bn1.running_mean.clone()
    student.feature_shapes(16)
    assert torch.equal(before, student.backbone.bn1.running_mean) and student.training
