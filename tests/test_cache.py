"""The teacher-target cache: equal to the live teacher, resumable, refused when it does not fit the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, distill_command, run_repfusion
from repfusion_pl import (
    CachedTeacher,
    DenseMSELoss,
    DiffusionTeacher,
    FixedTimestep,
    PolicyTimestep,
    RepFusionDistillation,
    Student,
    UniformTimestep,
)
from repfusion_pl.cli import main
from repfusion_pl.data import DigitsDataModule
from repfusion_pl.data.target_store import CacheError, TargetStore
from repfusion_pl.data.views import ViewSpec, render_view
from repfusion_pl.distillation.cache_build import build_cache
from repfusion_pl.distillation.losses import global_pool

GRID = [0, 100]


def digits(**overrides) -> DigitsDataModule:
    """About 90 training and 90 validation images at 8 px: cached in seconds."""
    fractions = {"val_fraction": 0.05, "test_fraction": 0.9}
    return DigitsDataModule(**{"image_size": 8, "batch_size": 32, **fractions, **overrides})


def live_module(teacher_dir: Path, dense: bool = False, **kwargs) -> RepFusionDistillation:
    torch.manual_seed(0)
    teacher = DiffusionTeacher(str(teacher_dir), layers=["mid_block.resnets.1.conv2"])
    student = Student("resnet18", in_channels=1, **({"taps": ["layer2"]} if dense else {}))
    loss = DenseMSELoss() if dense else None
    return RepFusionDistillation(teacher, student, kwargs.pop("sampler", FixedTimestep(0)), loss, **kwargs)


def build(teacher_dir: Path, folder: Path, dense: bool = False, **options) -> TargetStore:
    spec = options.pop("spec", ViewSpec(flip=True, augmented=1))
    module = live_module(teacher_dir, dense)
    return build_cache(
        module, digits(), folder, GRID, spec, "repfusion cache (test)", torch.device("cpu"), **options
    )


@pytest.fixture(scope="module")
def pooled_cache(gray_teacher_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "pooled"
    build(gray_teacher_dir, folder, shard_size=32, progress=False)
    return folder


@pytest.mark.parametrize("dense", [False, True])
def test_cached_targets_equal_the_live_teachers_for_the_same_image_view_and_t(
    gray_teacher_dir, tmp_path, dense
):
    store = build(gray_teacher_dir, tmp_path / "cache", dense, shard_size=32, progress=False)
    module, data = live_module(gray_teacher_dir, dense), digits()
    data.setup("fit")
    train, spec = data.splits["train"], ViewSpec(**store.manifest["views"])
    assert spec.count == 3 and store.manifest["splits"]["train"]["views"] == 3
    # The cache ran the teacher on batches of 32 (the data's batch size): compared on the same batch,
    # the targets are the same numbers (another batching sums convolutions in another order).
    for index, view in ((0, 0), (40, 1), (80, 2)):  # across shards, every kind of view
        start = index // 32 * 32
        batch = torch.stack(
            [render_view(train, i, view, spec) for i in range(start, min(start + 32, len(train)))]
        )
        for g, t in enumerate(GRID):
            live = module.teacher_targets(batch, torch.full((len(batch),), t), None)
            row = index - start
            cached = torch.from_numpy(store.read("train", "feature", index, view)[g])
            if dense:  # maps in float16: the live map rounded once
                assert torch.equal(cached, live["feature"][row].half())
            else:  # pooled vectors in float32: exactly
                assert torch.equal(cached, global_pool(live["feature"])[row])
            head = torch.from_numpy(store.read("train", "head", index, view)[g])
            assert torch.equal(head, live["head"].float().mean(dim=(2, 3))[row])


def test_a_step_from_the_cache_equals_a_step_from_the_live_teacher(gray_teacher_dir, pooled_cache):
    data = digits()
    cached_module = RepFusionDistillation(
        CachedTeacher(str(pooled_cache)), Student("resnet18", in_channels=1), FixedTimestep(100)
    )
    cached_module.teacher.attach(data)
    batch = next(iter(torch.utils.data.DataLoader(data._served("train"), batch_size=8)))
    live = live_module(gray_teacher_dir, sampler=FixedTimestep(100))
    cached_module.load_state_dict(live.state_dict())  # the same student and projector
    t = torch.full((8,), 100)
    cached_losses, _ = cached_module.feature_losses(batch["images"], t, batch["labels"], batch["targets"])
    live_losses, _ = live.feature_losses(batch["images"], t, batch["labels"])
    assert torch.equal(cached_losses["feature"], live_losses["feature"])


def test_a_cached_run_through_the_cli_checkpoints_the_live_teachers_fingerprint(gray_teacher_dir, tmp_path):
    cache = tmp_path / "cache"
    small = ["--data.init_args.val_fraction=0.05", "--data.init_args.test_fraction=0.9"]
    base = distill_command(gray_teacher_dir, tmp_path / "run", "distill_tiny.yaml", *small)[1:]
    main(["cache", *base, f"--cache.dir={cache}", "--cache.t_grid=[0, 100]", "--cache.shard_size=64"])
    fixed = ["--model.init_args.sampler=repfusion_pl.FixedTimestep", "--model.init_args.sampler.t=100"]
    main(
        distill_command(gray_teacher_dir, tmp_path / "run", ("distill_tiny.yaml", "cached_teacher.yaml"))
        + [f"--model.init_args.teacher.init_args.cache={cache}", *fixed, *small, "--trainer.max_steps=2"]
    )
    saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    live = DiffusionTeacher(str(gray_teacher_dir), layers=["mid_block.resnets.1.conv2"])
    assert saved["repfusion"]["teacher"] == live.fingerprint() and saved["global_step"] == 2


def test_a_killed_cache_build_resumes_at_the_first_missing_shard(gray_teacher_dir, tmp_path, monkeypatch):
    folder, straight = (
        tmp_path / "killed",
        build(gray_teacher_dir, tmp_path / "straight", shard_size=32, progress=False),
    )
    written = []
    original = TargetStore.write

    def dies_on_the_third_shard(self, split, shard, arrays):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process is stopped between two shards
        original(self, split, shard, arrays)
        written.append(self.shard_path(split, "feature", shard))

    monkeypatch.setattr(TargetStore, "write", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build(gray_teacher_dir, folder, shard_size=32, progress=False)
    kept = {path: os.stat(path).st_mtime_ns for path in written}
    with pytest.raises(CacheError, match="was not finished.*run the command that built it again"):
        CachedTeacher(str(folder))
    monkeypatch.setattr(TargetStore, "write", original)
    resumed = build(gray_teacher_dir, folder, shard_size=32, progress=False)
    assert {path: os.stat(path).st_mtime_ns for path in written} == kept  # not written again
    for split in ("train", "val"):
        for shard in range(resumed.shards(split).count):
            for target in resumed.manifest["targets"]:
                assert np.array_equal(
                    np.load(resumed.shard_path(split, target, shard)),
                    np.load(straight.shard_path(split, target, shard)),
                )


def test_a_disk_that_fills_removes_the_partial_shard_and_the_build_resumes(
    gray_teacher_dir, tmp_path, monkeypatch
):
    folder, saves = tmp_path / "full", []
    original = np.save

    def fills_on_the_fourth_file(path, array):
        saves.append(path)
        if len(saves) == 4:
            Path(path).write_bytes(b"half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, array)

    monkeypatch.setattr(np, "save", fills_on_the_fourth_file)
    with pytest.raises(CacheError, match=r"filled up while writing train shard 1 .*resumes at this shard"):
        build(gray_teacher_dir, folder, shard_size=32, progress=False)
    assert not list(folder.rglob("*.partial.npy"))
    monkeypatch.setattr(np, "save", original)
    assert build(gray_teacher_dir, folder, shard_size=32, progress=False).manifest["complete"]


def test_building_into_a_folder_that_holds_another_grid_is_refused(gray_teacher_dir, pooled_cache, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pooled_cache, copy)
    module = live_module(gray_teacher_dir)
    with pytest.raises(
        CacheError, match=r"holds a teacher-target cache of another run \(t_grid: .*choose another"
    ):
        build_cache(
            module,
            digits(),
            copy,
            [0, 50],
            ViewSpec(flip=True, augmented=1),
            "test",
            torch.device("cpu"),
            shard_size=32,
        )


def test_a_truncated_shard_is_named_with_the_command_that_rebuilds_it(pooled_cache, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pooled_cache, copy)
    shard = copy / "train" / "feature" / "00001.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(
        CacheError, match=r"shard .*00001\.npy is missing, truncated or corrupt.*repfusion cache"
    ):
        CachedTeacher(str(copy)).attach(digits())


@pytest.mark.parametrize(
    ("make", "problem", "fix"),
    [
        (
            lambda c: CachedTeacher(c, layers=["up_blocks.0.resnets.1"]),
            r"layers: cache has \['mid_block",
            r"repfusion cache --config",
        ),
        (
            lambda c: CachedTeacher(c, image_size=16),
            r"image_size: cache has 8, this run has 16",
            r"point cache:",
        ),
        (
            lambda c: CachedTeacher(c).attach(digits(seed=1)),
            r"other data: .*sha256_first_16",
            r"give the data module",
        ),
        (
            lambda c: CachedTeacher(c).attach(digits(test_fraction=0.85)),
            r"images\.train: cache has \d+, this run has \d+",
            r"Cache this data",
        ),
        (
            lambda c: sampler_module(c, UniformTimestep(max_t=50)),
            r"draws timesteps the cache .* does not hold",
            r"grid: \[0, 100\]",
        ),
        (
            lambda c: sampler_module(c, FixedTimestep(5)),
            r"\[5\]; its grid is \[0, 100\]",
            r"FixedTimestep a grid point",
        ),
        (
            lambda c: sampler_module(c, FixedTimestep(0), DenseMSELoss(), taps=["layer2"]),
            r"kept pooled vectors",
            r"build it again",
        ),
    ],
    ids=[
        "other layers",
        "other size",
        "other data",
        "other split",
        "off-grid sampler",
        "off-grid t",
        "dense loss on a pooled cache",
    ],
)
def test_a_cache_that_does_not_fit_the_run_is_refused_with_what_differs(pooled_cache, make, problem, fix):
    with pytest.raises(CacheError) as error:
        make(str(pooled_cache))
    assert __import__("re").search(problem, str(error.value)), str(error.value)
    assert __import__("re").search(fix, str(error.value)), str(error.value)


def sampler_module(cache: str, sampler, loss=None, **student) -> RepFusionDistillation:
    return RepFusionDistillation(
        CachedTeacher(cache), Student("resnet18", in_channels=1, **student), sampler, loss
    )


def test_grid_samplers_draw_only_grid_points_live_and_the_policy_learns_over_them(gray_teacher_dir):
    uniform = UniformTimestep(grid=[0, 100, 400])
    uniform.build(1000, 4, 1)
    assert set(uniform.draw(torch.rand(300, 1, 8, 8)).timesteps.tolist()) == {0, 100, 400}
    module = live_module(gray_teacher_dir, sampler=PolicyTimestep(num_classes=10, grid=[0, 100, 400]))
    assert module.sampler.policy[-1].out_features == 3
    draw = module.sampler.draw(torch.rand(16, 1, 8, 8))
    assert set(draw.timesteps.tolist()) <= {0, 100, 400} and draw.log_prob.shape == (16,)
    losses, _, _ = module.training_losses(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert {"feature", "policy", "head_ce"} <= set(losses)
    with pytest.raises(ValueError, match=r"grid=\[0, 1000\] leaves the teacher.s timesteps"):
        live_module(gray_teacher_dir, sampler=UniformTimestep(grid=[0, 1000]))


def test_two_ddp_processes_each_read_their_share_of_the_cache(gray_teacher_dir, pooled_cache, tmp_path):
    ddp = [
        "--trainer.strategy=ddp",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_steps=2",
    ]
    args = distill_command(gray_teacher_dir, tmp_path / "run", ("distill_tiny.yaml", "cached_teacher.yaml"))
    fixed = ["--model.init_args.sampler=repfusion_pl.FixedTimestep", "--model.init_args.sampler.t=0"]
    data = ["--data.init_args.val_fraction=0.05", "--data.init_args.test_fraction=0.9"]
    done = run_repfusion(
        *args, f"--model.init_args.teacher.init_args.cache={pooled_cache}", *fixed, *data, *ddp, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_the_shipped_cached_override_parses_on_the_distillation_config(capsys):
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/distill.yaml"),
                "--config",
                str(ROOT / "configs/distill-cached.yaml"),
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["teacher"]["class_path"] == "repfusion_pl.CachedTeacher"
    assert model["teacher"]["init_args"]["layers"]  # the live teacher's arguments carried over, to be checked
    assert model["sampler"]["init_args"]["grid"] == [0, 100, 200, 400]
