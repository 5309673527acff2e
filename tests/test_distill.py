from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from repfusion_pl import (
    DenseMSELoss,
    DiffusionTeacher,
    FixedTimestep,
    PolicyTimestep,
    RepFusionDistillation,
    Student,
    TimestepTelemetry,
)


def make_module(teacher_dir, sampler=None, **kwargs):
    student_kwargs = kwargs.pop("student_kwargs", {})
    teacher = DiffusionTeacher(str(teacher_dir), layers=kwargs.pop("layers", ["mid_block.resnets.1.conv2"]))
    student = Student("resnet18", in_channels=teacher.in_channels, **student_kwargs)
    sampler = sampler if sampler is not None else PolicyTimestep(num_classes=3, baseline="batch_mean")
    return RepFusionDistillation(teacher, student, sampler=sampler, **kwargs)


def tiny_loader(n=16, channels=1, classes=3, batch_size=8):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(n, channels, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    )
    return DataLoader(data, batch_size=batch_size)


def test_projector_channels_are_inferred(gray_teacher_dir):
    module = make_module(
        gray_teacher_dir,
        layers=["down_blocks.0.resnets.0.conv2", "mid_block.resnets.1.conv2"],
        student_kwargs={"taps": ["layer3", "layer4"]},
    )
    assert [(p.in_channels, p.out_channels) for p in module.projectors] == [(256, 8), (512, 16)]


def test_only_the_feature_loss_reaches_the_student(gray_teacher_dir):
    module = make_module(gray_teacher_dir)
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    terms, logs, timesteps = module.training_losses(images, labels)
    assert timesteps.shape == (4,)
    assert set(terms) == {"feature", "head_ce", "policy", "entropy_bonus"}
    assert {"t_mean", "t_std", "policy_entropy"} <= set(logs)
    for name in ("head_ce", "policy", "entropy_bonus"):
        grads = torch.autograd.grad(terms[name], list(module.student.parameters()), allow_unused=True)
        assert all(g is None for g in grads), name
    terms["feature"].backward()
    assert module.student.backbone.layer4[1].conv2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.sampler.parameters())


def test_checkpoint_holds_student_projectors_sampler_never_the_teacher(gray_teacher_dir, tmp_path):
    module = make_module(gray_teacher_dir)
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_loader())
    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    state = torch.load(tmp_path / "distill.ckpt", weights_only=True)["state_dict"]
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"student", "sampler", "projectors"}
    assert {
        "sampler.policy.8.weight",
        "sampler.reward.head.4.weight",
        "sampler.baseline_value",
        "sampler.epoch",
    } <= set(state)
    reloaded = make_module(gray_teacher_dir)
    reloaded.load_state_dict(state, strict=True)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_two_parameter_groups_with_their_own_learning_rates(gray_teacher_dir):
    from functools import partial

    module = make_module(gray_teacher_dir, optimizer=partial(torch.optim.Adam, lr=1e-3), sampler_lr=1e-2)
    optimiser = module.configure_optimizers()
    names = [g["name"] for g in optimiser.param_groups]
    assert names == ["student", "sampler"]
    assert [g["lr"] for g in optimiser.param_groups] == [1e-3, 1e-2]
    n_student = sum(p.numel() for p in optimiser.param_groups[0]["params"])
    assert n_student == sum(
        p.numel() for p in [*module.student.parameters(), *module.projectors.parameters()]
    )
    fixed = make_module(gray_teacher_dir, sampler=FixedTimestep(0)).configure_optimizers()
    assert len(fixed.param_groups) == 1 and fixed.defaults["lr"] == 0.1


def test_non_finite_loss_names_step_and_term(gray_teacher_dir):
    module = make_module(gray_teacher_dir, sampler=FixedTimestep(0))
    with torch.no_grad():
        module.projectors[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"step 0 .*\['feature'\]"):
        module.training_step((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), 0)


def test_tap_count_and_channel_mismatches_are_explained(gray_teacher_dir):
    with pytest.raises(ValueError, match="pair up one to one"):
        make_module(gray_teacher_dir, student_kwargs={"taps": ["layer3", "layer4"]})
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    with pytest.raises(ValueError, match="set student in_channels to 1"):
        RepFusionDistillation(teacher, Student("resnet18", in_channels=3))


def test_dense_loss_on_unmatchable_maps_is_explained(gray_teacher_dir):
    with pytest.raises(ValueError, match=r"gives 1x1 .* gives 4x4 .*stem: cifar"):
        make_module(
            gray_teacher_dir,
            feature_loss=DenseMSELoss(),
            student_kwargs={"stem": "imagenet"},
            layers=["mid_block.resnets.1.conv2"],
        )


def test_dense_loss_on_matchable_maps_trains(gray_teacher_dir):
    module = make_module(
        gray_teacher_dir,
        sampler=FixedTimestep(0),
        feature_loss=DenseMSELoss(),
        student_kwargs={"taps": ["layer2"]},
    )
    output = module.training_step((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), 0)
    assert torch.isfinite(output["loss"]) and output["timesteps"].tolist() == [0, 0]


def test_ema_callback_averages_the_student_and_leaves_the_teacher_shared(gray_teacher_dir, tmp_path):
    module = make_module(gray_teacher_dir)
    ema = EMAWeightAveraging(decay=0.5)
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[ema])
    before = copy.deepcopy(module.student.state_dict())
    trainer.fit(module, tiny_loader())
    assert ema._average_model.module.teacher.unet is module.teacher.unet
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_timestep_histogram_is_counted_per_epoch(gray_teacher_dir, tmp_path):
    module = make_module(gray_teacher_dir, sampler=FixedTimestep(5))
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, tiny_loader())
    (telemetry,) = [c for c in trainer.callbacks if isinstance(c, TimestepTelemetry)]  # added by the module
    assert len(telemetry.history) == 2
    assert telemetry.history[0][5] == 16 and sum(telemetry.history[1]) == 16
    log_dir = Path(trainer.log_dir)
    assert (log_dir / "timesteps.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((log_dir / "timestep_counts.json").read_text())["per_epoch"] == telemetry.history


def test_a_trainers_own_telemetry_is_kept(gray_teacher_dir, tmp_path):
    module = make_module(gray_teacher_dir, sampler=FixedTimestep(5))
    own = TimestepTelemetry(plot=False)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[own])
    trainer.fit(module, tiny_loader())
    assert [c for c in trainer.callbacks if isinstance(c, TimestepTelemetry)] == [own]
    assert own.history[0][5] == 16
    assert not (Path(trainer.log_dir) / "timesteps.png").exists()


def test_several_teacher_layers_into_one_student_tap_are_concatenated_and_projected(gray_teacher_dir):
    layers = ["mid_block.resnets.1.conv2", "up_blocks.0.resnets.1"]
    module = make_module(gray_teacher_dir, sampler=FixedTimestep(10), layers=layers)
    teacher = module.teacher
    channels = sum(teacher.feature_shapes[layer][0] for layer in layers)
    assert [(p.in_channels, p.out_channels) for p in module.projectors] == [(512, channels)]
    images = torch.rand(4, 1, 8, 8)
    timesteps = torch.full((4,), 10)
    losses, targets = module.feature_losses(images, timesteps, None)
    assert set(losses) == {"feature"} and set(targets) == {"feature", "head"}
    from repfusion_pl.distillation.projectors import concat_maps

    features = teacher(images, timesteps, None)
    target = concat_maps([features[layer] for layer in layers])
    assert target.shape[1] == channels and target.shape[-2:] == features[layers[0]].shape[-2:]
    torch.testing.assert_close(targets["feature"], target)
    torch.testing.assert_close(targets["head"], features[module.head_layer])
    projected = module.projectors[0](module.student(images)[module.student.taps[0]])
    torch.testing.assert_close(losses["feature"], module.feature_loss(projected, target))


class PoisonAt(Callback):
    """Makes the projector's output NaN from the given optimiser step on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.projectors[0].bias.fill_(float("nan"))


def test_a_deferred_non_finite_check_names_the_first_bad_step_and_writes_no_checkpoint(
    gray_teacher_dir, tmp_path
):
    module = make_module(gray_teacher_dir, sampler=FixedTimestep(0), finite_check_every=4)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = quiet_trainer(
        tmp_path, max_steps=8, callbacks=[PoisonAt(1), checkpoints], enable_checkpointing=True
    )
    with pytest.raises(FloatingPointError, match=r"step 1 \(epoch 0\): term\(s\) \['feature'\] = \[nan\]"):
        trainer.fit(module, tiny_loader(n=80))
    # Read back before the step-3 checkpoint was written, not at every step.
    assert trainer.global_step == 3 and not list((tmp_path / "ckpt").glob("*.ckpt"))


def test_how_often_the_record_is_read_does_not_change_training(gray_teacher_dir, tmp_path):
    weights = []
    for every in (1, 1000):
        torch.manual_seed(0)
        module = make_module(gray_teacher_dir, finite_check_every=every)
        quiet_trainer(tmp_path, max_steps=3).fit(module, tiny_loader())
        weights.append(module.student.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
