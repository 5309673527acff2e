"""The timestep policy in the regime real runs are in: a flat-topped, noisy reward and ~250 updates.

The landscape is the one measured on the shipped Fashion teacher (benchmarks/results/
policy-landscape.json, task-head reward reading the head layer): a top region of t = 50-200 within
0.04 of each other, t = 0 and t = 300-600 0.04-0.17 lower, 800 and 999 far below, and a per-image
spread of 1.4 (measured: 1.1-1.5). The rewards here are that
table plus noise, so the real `PolicyTimestep` (draw, advantage, REINFORCE, entropy schedule) runs on
the real optimiser in seconds.
"""

from __future__ import annotations

import pytest
import torch

from repfusion_pl.timesteps import PolicyTimestep
from repfusion_pl.timesteps.actions import (
    check_timestep_grid,
    log_snr_grid,
    mass_on_grid,
    settled,
)
from repfusion_pl.timesteps.rewards import RewardOutput, TimestepReward

GRID = [0, 50, 100, 200, 300, 400, 500, 600, 800, 999]
MEANS = torch.tensor([-0.802, -0.714, -0.690, -0.677, -0.720, -0.762, -0.778, -0.844, -1.044, -1.205])
TOP = {1, 2, 3}  # t in {50, 100, 200}: within two paired standard errors of the best
SHIPPED = {"grid": GRID, "baseline": "batch_mean", "normalize_advantage": True}


class FlatTopReward(TimestepReward):
    """The table's reward at each image's grid point (its one feature), plus Gaussian per-image noise."""

    def __init__(self, spread: float, generator: torch.Generator) -> None:
        super().__init__()
        self.spread, self.generator = spread, generator

    def forward(self, features, labels):
        noise = torch.randn(len(features), generator=self.generator)
        return RewardOutput(MEANS[features[:, 0].long()] + self.spread * noise)


def settle(seed: int, options: dict, updates: int = 250, batch: int = 64) -> tuple[int, float]:
    """The study's budget, optimiser and schedule (SGD 0.1, momentum 0.9, cosine); where the mass ends."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(256, 1, 8, 8, generator=generator)
    policy = PolicyTimestep(reward=FlatTopReward(1.4, generator), entropy_end=0.5, **options)
    policy.build(1000, 1, 1)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=updates)  # configs/distill.yaml's
    grid = torch.tensor(GRID)
    for step in range(updates):
        policy.set_progress(step, updates)
        draw = policy.draw(images[torch.randint(0, len(images), (batch,), generator=generator)], generator)
        nearest = (draw.timesteps[:, None] - grid[None]).abs().argmin(1)
        out = policy.step_loss(draw, nearest[:, None].float(), None)
        optimiser.zero_grad()
        torch.stack(list(out.losses.values())).sum().backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        probs = policy.distribution(images).probs
    return settled(mass_on_grid(probs, policy.support(), GRID))


def test_the_shipped_setting_settles_in_the_top_region_within_the_studys_budget():
    """Seeds 0-20, with AVX-512 and with ATEN_CPU_CAPABILITY=avx2 (the same on both): the heaviest
    point was in the top region in 21 of 21 runs; 17 of 21 settled (>= 0.8 on one point or two
    adjacent ones; the others held 0.64-0.78 there), 7 of seeds 0-7. Asserted: all 8 in the top
    region, at least 6 of 8 settled (a margin of one seed).
    """
    runs = [settle(seed, SHIPPED) for seed in range(8)]
    assert all(point in TOP for point, _ in runs), runs
    assert sum(share >= 0.8 for _, share in runs) >= 6, runs


def test_the_authors_setting_rarely_settles_at_that_budget():
    """1,000 actions without a baseline, seeds 0-7: settled in 0 runs with AVX-512 and in 1 with AVX2
    (largest shares 0.79 and 0.82); over seeds 0-20, in 2 and 3. Asserted: at most 3 of 8.
    """
    runs = [settle(seed, {"baseline": "none"}) for seed in range(8)]
    assert sum(share >= 0.8 for _, share in runs) <= 3, runs


def test_log_snr_bins_follow_the_schedule_and_refuse_too_many():
    betas = torch.linspace(1e-4, 0.02, 1000)
    alphas = torch.cumprod(1 - betas, 0)
    grid = log_snr_grid(alphas, 10)
    assert len(grid) == 10 and grid == sorted(grid) and grid[0] < 20 and grid[-1] > 900
    with pytest.raises(ValueError, match="only .* distinct"):
        log_snr_grid(alphas[:12], 10)


def test_settled_reads_one_point_or_two_adjacent_ones():
    assert settled(torch.tensor([0.02, 0.9, 0.03, 0.05])) == (1, pytest.approx(0.93))
    point, share = settled(torch.tensor([0.05, 0.45, 0.45, 0.05]))
    assert point in (1, 2) and share == pytest.approx(0.9)
    mass = mass_on_grid(torch.full((1000,), 1e-3), list(range(1000)), GRID)
    assert mass.sum() == pytest.approx(1.0) and mass[-1] < mass[-2]


@pytest.mark.parametrize(
    ("grid", "problem"),
    [([], "is empty"), ([0, 1000], "leaves"), ([50, 0], "not sorted"), ([0, 0, 5], "repeats")],
)
def test_a_bad_grid_is_refused_with_the_fix(grid, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        check_timestep_grid(grid, 1000, "PolicyTimestep.grid")
    assert "increasing order" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"entropy_end": 0.0}, r"entropy_end=0.0 is a fraction of the run"),
        ({"entropy_end": 1.5}, r"entropy_end=1.5 is a fraction"),
        ({"normalize_advantage": True}, "give baseline: batch_mean"),
        ({"grid": [0, 10], "log_snr_bins": 4}, "grid or log_snr_bins, not both"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ],
)
def test_bad_policy_options_are_refused_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyTimestep(num_classes=3, **options)


def test_entropy_bonus_falls_per_step_and_warm_up_holds_the_policy():
    policy = PolicyTimestep(num_classes=3, entropy_weight=0.1, entropy_end=0.5, warmup_steps=2)
    policy.build(1000, 4, 1)
    policy.set_progress(0, 100)
    assert policy.current_entropy_weight == pytest.approx(0.1) and policy.warming_up
    policy.set_progress(25, 100)
    assert policy.current_entropy_weight == pytest.approx(0.05) and not policy.warming_up
    policy.set_progress(60, 100)
    assert policy.current_entropy_weight == 0.0
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        policy.set_progress(1, None)
