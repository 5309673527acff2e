"""The policy's options inside a real distillation module and trainer, and the same-timestep reward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import quiet_trainer
from repfusion_pl import ContrastiveReward, FixedTimestep, PolicyTimestep
from repfusion_pl.timesteps.rewards import same_timestep_info_nce
from test_distill import make_module, tiny_loader


def test_the_entropy_bonus_falls_per_step_over_a_max_steps_run(gray_teacher_dir, tmp_path):
    seen = []
    sampler = PolicyTimestep(num_classes=3, baseline="batch_mean", entropy_end=0.5, grid=[0, 10, 20])
    module = make_module(gray_teacher_dir, sampler=sampler)
    original = sampler.reinforce

    def recording(draw, reward):
        seen.append(float(sampler._entropy_beta))
        return original(draw, reward)

    sampler.reinforce = recording  # type: ignore[method-assign]
    trainer = quiet_trainer(tmp_path, max_steps=6, max_epochs=-1)
    trainer.fit(module, tiny_loader(n=16, batch_size=4))  # 4 steps an epoch: the run crosses an epoch
    assert sampler.total_steps == 6
    assert seen == pytest.approx([0.1 * max(0.0, 1 - step / 3) for step in range(6)])


def test_log_snr_bins_become_the_policys_grid_from_the_teachers_schedule(gray_teacher_dir):
    module = make_module(gray_teacher_dir, sampler=PolicyTimestep(num_classes=3, log_snr_bins=6))
    grid = module.sampler.support()
    assert len(grid) == 6 and grid == sorted(set(grid)) and grid[-1] <= 999
    draw = module.sampler.draw(torch.rand(8, 1, 8, 8))
    assert set(draw.timesteps.tolist()) <= set(grid)
    assert "grid=[" in module.sampler.summary()


def test_the_reward_reads_the_distilled_targets_when_asked(gray_teacher_dir):
    layers = ["mid_block.resnets.1.conv2", "up_blocks.0.resnets.1"]
    module = make_module(gray_teacher_dir, layers=layers, reward_reads="targets")
    channels = sum(module.teacher.feature_shapes[layer][0] for layer in layers)
    assert module.sampler.reward.head[0].in_features == channels
    images, labels = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    targets = module.teacher_targets(images, torch.zeros(8, dtype=torch.long), labels)
    assert targets["head"].shape == (8, channels)
    assert torch.allclose(targets["head"], targets["feature"].float().mean(dim=(2, 3)), atol=1e-5)
    losses, _, _ = module.training_losses(images, labels)
    assert {"feature", "policy", "head_ce"} <= set(losses)


def test_same_timestep_info_nce_matches_the_formula():
    torch.manual_seed(0)
    embeddings, timesteps = torch.randn(7, 5), torch.tensor([0, 3, 0, 0, 3, 0, 3])
    losses, valid = same_timestep_info_nce(embeddings, timesteps, 2, 0.5)
    z = F.normalize(embeddings, dim=1)
    for i in range(7):
        partners = [j for k in range(1, 7) if timesteps[(j := (i + k) % 7)] == timesteps[i]][:2]
        logits = torch.stack([z[i] @ z[i]] + [z[i] @ z[j] for j in partners]) / 0.5
        assert losses[i] == pytest.approx(float(torch.logsumexp(logits, 0) - logits[0]), abs=1e-5)
    assert valid.all()
    _, valid = same_timestep_info_nce(embeddings, timesteps, 3, 0.5)
    assert valid.tolist() == [True, False, True, True, False, True, False]  # t=3 has only 2 partners


def test_an_image_at_a_minority_timestep_gains_nothing_from_standing_apart():
    """The whole-batch reward pays two images for a timestep whose features stand apart; the
    same-timestep reward gives them the others' mean (they have too few partners to be scored)."""
    torch.manual_seed(0)
    features = torch.zeros(12, 16)
    features[:10, :8] = 1.0 + 0.3 * torch.randn(10, 8)  # the majority's timestep: alike, hard to tell apart
    features[10:, 8:] = torch.randn(2, 8)  # the minority's timestep puts them elsewhere
    timesteps = torch.tensor([0] * 10 + [500] * 2)
    whole = ContrastiveReward(projection_dim=None, negatives=None)(features, None).reward
    assert whole[10:].mean() > whole[:10].mean()
    same = ContrastiveReward(projection_dim=None, negatives=2)(features, None, timesteps=timesteps).reward
    assert torch.allclose(same[10:], same[:10].mean().expand(2))


def test_contrastive_negatives_are_checked():
    with pytest.raises(ValueError, match="negatives must be at least 1"):
        ContrastiveReward(negatives=0)
    with pytest.raises(ValueError, match="batches of 5 or more"):
        ContrastiveReward(projection_dim=None, negatives=4)(torch.randn(4, 8), None)


def test_the_policys_own_learning_rate_goes_to_its_group_and_leaves_with_it(gray_teacher_dir):
    module = make_module(gray_teacher_dir, sampler=PolicyTimestep(num_classes=3, lr=0.05))
    student, sampler = module.parameter_groups()
    assert sampler["lr"] == 0.05 and "lr" not in student
    fixed = make_module(gray_teacher_dir, sampler=FixedTimestep(0))  # a swapped sampler takes no rate along
    assert [group["name"] for group in fixed.parameter_groups()] == ["student"]
