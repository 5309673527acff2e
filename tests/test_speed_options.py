"""Every speed option gives the same numbers as the plain path (or within bf16 tolerance)."""

from __future__ import annotations

import pytest
import torch

from repfusion_pl import DiffusionTeacher, FixedTimestep, RepFusionDistillation, Student
from repfusion_pl.students.taps import compile_untapped


@pytest.fixture
def teacher(rgb_teacher_dir):
    return DiffusionTeacher(
        str(rgb_teacher_dir), layers=["down_blocks.1.resnets.0", "mid_block.resnets.1.conv2"]
    )


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 10, 500, 999])


def test_inference_mode_features_equal_no_grad_features_and_can_be_saved_for_backward(teacher):
    x, t = batch()
    fast, plain = teacher(x, t), teacher(x, t, inference_mode=False)
    for name in teacher.layers:
        assert torch.equal(fast[name], plain[name])
        assert not fast[name].is_inference()
    student_side = torch.rand_like(fast["mid_block.resnets.1.conv2"], requires_grad=True)
    torch.nn.functional.mse_loss(student_side, fast["mid_block.resnets.1.conv2"]).backward()
    assert student_side.grad is not None


def test_bf16_autocast_features_stay_within_bf16_tolerance(teacher):
    x, t = batch()
    reference = teacher(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = teacher(x, t)
    for name in teacher.layers:
        scale = reference[name].abs().max()
        assert (low[name].float() - reference[name]).abs().max() <= 0.05 * scale


def make(teacher, **options):
    torch.manual_seed(0)
    return RepFusionDistillation(teacher, Student("resnet18", in_channels=3), FixedTimestep(3), **options)


@pytest.mark.parametrize(
    ("module_options", "teacher_options"),
    [({"channels_last": False}, {}), ({}, {"inference_mode": False}), ({}, {"truncate": False})],
    ids=["no_channels_last", "no_inference_mode", "no_truncation"],
)
def test_each_option_gives_the_same_loss_and_gradients(rgb_teacher_dir, module_options, teacher_options):
    images = torch.rand(4, 3, 8, 8)
    losses, grads = [], []
    for options, teacher_kwargs in (({}, {}), (module_options, teacher_options)):
        teacher = DiffusionTeacher(str(rgb_teacher_dir), **teacher_kwargs)
        module = make(teacher, **options)
        module.log = lambda *a, **k: None
        loss = module.training_step((images, torch.zeros(4, dtype=torch.long)), 0)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(module.student.backbone.conv1.weight.grad.clone())
    # Other memory layouts pick other kernels, so sums run in another order: float32 rounding only.
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-3 * grads[0].abs().max().item())


@pytest.mark.slow
def test_torch_compile_gives_the_same_features(rgb_teacher_dir):
    teacher = DiffusionTeacher(str(rgb_teacher_dir))
    x, t = batch()
    reference = teacher(x, t)
    compiled_paths = compile_untapped(teacher.unet, teacher.layers)
    assert "down_blocks" in compiled_paths and "mid_block" not in compiled_paths
    torch.testing.assert_close(teacher(x, t), reference, rtol=1e-4, atol=1e-5)
    # The same through the options: a compiled teacher and a compiled student, in one step.
    compiled = DiffusionTeacher(str(rgb_teacher_dir), compile=True)
    torch.testing.assert_close(compiled(x, t), reference, rtol=1e-4, atol=1e-5)
    student = Student("resnet18", in_channels=3, compile=True)
    assert student(x)["layer4"].shape == (4, 512, 1, 1)


def test_a_captured_step_gives_the_eager_losses_and_gradients_and_takes_another_batch_shape(teacher):
    """compile_step through dynamo and AOTAutograd (the aot_eager backend: the capture, not codegen)."""
    from repfusion_pl import PolicyTimestep

    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    results = []
    for options in ({}, {"compile_step": True, "compile_options": {"backend": "aot_eager"}}):
        torch.manual_seed(0)
        chosen = PolicyTimestep(num_classes=3, baseline="ema")  # the policy, reward and baseline in the graph
        module = RepFusionDistillation(teacher, Student("resnet18", in_channels=3), chosen, **options)
        module.log = lambda *a, **k: None
        torch.manual_seed(1)
        loss = module.training_step((images, labels), 0)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
        odd = module.training_step((images[:3], labels[:3]), 1)["loss"]  # the last, smaller batch
        assert torch.isfinite(odd)
    (eager_loss, eager_grads), (captured_loss, captured_grads) = results
    torch.testing.assert_close(captured_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert captured_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(captured_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())
