from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from repfusion_pl import DiffusionTeacher, PolicyTimestep
from repfusion_pl.timesteps.bandit import PeakedTimestepBandit, TimestepBanditEnv
from repfusion_pl.timesteps.rewards import task_head_loss


@pytest.fixture
def bandit(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    policy = PolicyTimestep(num_classes=3)
    policy.build(teacher.num_train_timesteps, teacher.feature_shapes[teacher.layers[0]][0], 1)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    return TimestepBanditEnv(teacher, policy.reward, images, labels), teacher, policy


def test_timestep_bandit_passes_gymnasiums_checker(bandit):
    env, _, _ = bandit
    check_env(env, skip_render_check=True)


def test_bandit_reward_is_the_distillation_reward(bandit):
    env, teacher, policy = bandit
    _, info = env.reset(seed=3)
    _, reward, terminated, truncated, _ = env.step(123)
    i = info["index"]
    features = teacher(env.images[i : i + 1], torch.tensor([123]))[teacher.layers[0]]
    expected = -task_head_loss(policy.reward.head, features, env.labels[i : i + 1]).item()
    assert reward == pytest.approx(expected) and terminated and not truncated
    with pytest.raises(ValueError, match="not a timestep"):
        env.step(1000)


def test_peaked_bandit_passes_the_checker():
    check_env(PeakedTimestepBandit(), skip_render_check=True)


@pytest.mark.parametrize("baseline", ["none", "batch_mean", "ema"])
def test_policy_concentrates_near_the_known_best_timestep(baseline):
    """The policy's own REINFORCE update must put most of its mass within 2 widths of t*.

    Over seeds 0-20 (torch and the bandit), with AVX-512 and with ATEN_CPU_CAPABILITY=avx2, every
    baseline put all of its mass (1.00) there; the threshold is 0.8.
    """
    torch.manual_seed(0)
    env = PeakedTimestepBandit(num_timesteps=100, t_star=30, width=5.0, noise=0.05)
    env.reset(seed=0)
    policy = PolicyTimestep(num_classes=2, baseline=baseline, entropy_weight=0.01, entropy_end_epoch=1)
    policy.build(100, 4, 1)
    optimiser = torch.optim.Adam(policy.policy.parameters(), lr=0.05)
    for _ in range(300):
        observations = torch.from_numpy(np.stack([env.reset()[0] for _ in range(32)]))
        draw = policy.draw(observations)
        rewards = torch.tensor([env.step(int(t))[1] for t in draw.timesteps], dtype=torch.float32)
        out = policy.reinforce(draw, rewards)
        optimiser.zero_grad()
        (out.losses["policy"] + out.losses["entropy_bonus"]).backward()
        optimiser.step()
    probs = policy.distribution(observations).probs.mean(0)
    near = probs[20:41].sum().item()
    assert near > 0.8, f"only {near:.2f} of the mass within 10 of t* = 30 (baseline {baseline})"
