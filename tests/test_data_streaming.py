"""LitData streaming: `repfusion optimize`, StreamingImageDataModule through the CLI, exact resume, shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from conftest import ROOT, distill_command, quiet_trainer, run_repfusion
from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student, TimestepTelemetry
from repfusion_pl.checkpoints import read_checkpoint
from repfusion_pl.cli import main
from repfusion_pl.data import StreamingImageDataModule
from repfusion_pl.data.files import DatasetNotFoundError
from repfusion_pl.data.optimize import load_source, optimize_dataset
from repfusion_pl.data.stream_index import StreamChangedError
from test_resume import compare_checkpoints

HERE = Path(__file__).resolve().parent
COUNT = 48  # images 0..47, image i filled with grey level 5 i, of class i % 3
TINY = ("distill_tiny.yaml", "streaming_tiny.yaml")  # tests/conf/: 8 px, batches of 8, 1 channel


def write_images(root: Path, labelled: bool = True, count: int = COUNT) -> Path:
    for i in range(count):
        folder = root / "abc"[i % 3] if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 5 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def optimize(source: Path, output: Path) -> Path:
    optimize_dataset(load_source(str(source), None, "image", "label"), output, 1, "2KB", 0, str(source))
    return output


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    """48 labelled 16 px images, optimized into chunks of about 2 kB (several per split)."""
    tmp = tmp_path_factory.mktemp("stream")
    return optimize(write_images(tmp / "images"), tmp / "optimized")


def data(stream: Path, **options) -> StreamingImageDataModule:
    defaults = dict(image_size=8, batch_size=8, grayscale=True, num_workers=0, val_fraction=0.25)
    return StreamingImageDataModule(str(stream), **{**defaults, **options})  # type: ignore[arg-type]


def identities(images: torch.Tensor) -> list[int]:
    """Which source image each (un-augmented) image of a batch is: its grey level / 5."""
    return (images[:, 0, 0, 0] * 255 / 5).round().long().tolist()


def test_optimize_through_the_cli_and_stream_it_back(tmp_path, capsys):
    source = write_images(tmp_path / "images")
    main(["optimize", str(source), str(tmp_path / "out"), "--num_workers=1", "--chunk_bytes=2KB"])
    printed = capsys.readouterr().out
    assert f"wrote {COUNT} images to {tmp_path / 'out'}" in printed
    assert "repfusion_pl.data.StreamingImageDataModule, init_args: {input_dir:" in printed
    assert json.loads((tmp_path / "out" / "repfusion.json").read_text())["classes"] == ["a", "b", "c"]
    module = data(tmp_path / "out", augment=False)
    module.setup()
    read = [pair for split in ("train", "val") for images, labels in module.ordered_loader(split)
            for pair in zip(identities(images), labels.tolist(), strict=True)]  # fmt: skip
    assert sorted(read) == [(i, i % 3) for i in range(COUNT)]  # every image once, with its label
    assert module.num_classes == 3 and len(module.splits["val"]) == COUNT // 4


def test_optimize_a_parquet_dataset_and_a_split_folder(tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    images = [Image.fromarray(np.full((16, 16, 3), 5 * i, np.uint8)) for i in range(12)]
    rows = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 2 for i in range(12)]}, features=features
    )
    rows.to_parquet(tmp_path / "train.parquet")
    main(["optimize", str(tmp_path / "train.parquet"), str(tmp_path / "hf"), "--num_workers=1"])
    assert json.loads((tmp_path / "hf" / "repfusion.json").read_text())["classes"] == ["x", "y"]
    module = data(tmp_path / "hf", augment=False, val_fraction=0.5)
    module.setup()
    pairs = [
        pair
        for images, labels in module.ordered_loader("val")
        for pair in zip(identities(images), labels, strict=True)
    ]
    assert len(pairs) == 6 and all(label == i % 2 for i, label in pairs)
    for split in ("train", "val"):  # train/ and val/ folders become two optimized folders
        write_images(tmp_path / "split" / split, count=6)
    main(["optimize", str(tmp_path / "split"), str(tmp_path / "two"), "--num_workers=1"])
    assert (
        f"input_dir: {tmp_path / 'two' / 'train'}, val_dir: {tmp_path / 'two' / 'val'}"
        in capsys.readouterr().out
    )


def test_fit_through_the_cli_with_a_yaml(gray_teacher_dir, stream, tmp_path):
    main(distill_command(gray_teacher_dir, tmp_path, TINY, f"--data.init_args.input_dir={stream}",
                         "--trainer.fast_dev_run=2"))  # fmt: skip


def test_the_cache_builds_from_the_stream_and_a_cached_run_trains(gray_teacher_dir, stream, tmp_path):
    fit_args = distill_command(gray_teacher_dir, tmp_path, TINY, f"--data.init_args.input_dir={stream}",
                               "--trainer.fast_dev_run=2")  # fmt: skip
    cache = ["--cache.dir", str(tmp_path / "cache"), "--cache.t_grid=[0, 100]", "--cache.shard_size=16"]
    main(["cache", *fit_args[1:], *cache])
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["data"]["data_module"] == "StreamingImageDataModule"
    assert manifest["splits"] == {"train": {"images": 36, "views": 2}, "val": {"images": 12, "views": 1}}
    cached = ["--config", str(HERE / "conf" / "cached_teacher.yaml"),
              f"--model.init_args.teacher.init_args.cache={tmp_path / 'cache'}",
              "--model.init_args.sampler.init_args.grid=[0, 100]"]  # fmt: skip
    main([*fit_args, *cached])  # the cached views, read from the optimized folder by index


def fit(teacher: Path, root: Path, stream: Path, workers: int, every: int, limit: int | None,
        ckpt_path: Path | None = None, **options):  # fmt: skip
    """Two epochs of distillation on the stream (four batches each), a checkpoint every ``every`` steps."""
    seed_everything(0)
    module = RepFusionDistillation(
        DiffusionTeacher(str(teacher)), Student("resnet18", in_channels=1), PolicyTimestep(10)
    )
    telemetry = TimestepTelemetry(plot=False)
    callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_last=True), telemetry]
    trainer = quiet_trainer(
        root, max_epochs=2, limit_train_batches=limit, limit_val_batches=0, deterministic=True,
        callbacks=callbacks, enable_checkpointing=True, **options,
    )  # fmt: skip
    trainer.fit(module, datamodule=data(stream, num_workers=workers), ckpt_path=ckpt_path)
    return module, telemetry


@pytest.mark.parametrize(
    ("workers", "limit", "every", "stop", "position"),
    [
        (0, None, 3, 6, (1, 2)),  # mid-epoch 1
        (2, 3, 2, 5, (1, 1)),  # mid-epoch, workers, epochs cut short by limit_train_batches
        (0, 3, 3, 4, (0, 3)),  # the last batch of an epoch cut short: the next epoch starts afresh
    ],
)
def test_mid_epoch_resume_equals_the_straight_run(gray_teacher_dir, stream, tmp_path, workers, limit, every,
                                                  stop, position):  # fmt: skip
    straight, straight_telemetry = fit(gray_teacher_dir, tmp_path / "straight", stream, workers, every, limit)
    fit(gray_teacher_dir, tmp_path / "first", stream, workers, every, limit, max_steps=stop)
    first = tmp_path / "first" / "last.ckpt"
    checkpoint = read_checkpoint(first)
    state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == position
    assert checkpoint["StreamingImageDataModule"]["train_stream"]["images"] == 36
    resumed, telemetry = fit(
        gray_teacher_dir, tmp_path / "second", stream, workers, every, limit, ckpt_path=first
    )
    assert resumed.global_step == straight.global_step
    if position[1] != limit:  # (an epoch's last step: Lightning skips that epoch's end hooks on resume)
        assert telemetry.history == straight_telemetry.history
    for (name, a), b in zip(
        straight.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def rank_loader(module: StreamingImageDataModule, rank: int):
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    loop = SimpleNamespace(epoch_progress=progress, epoch_loop=SimpleNamespace(batch_progress=progress))
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=2, global_rank=rank, num_nodes=1, fit_loop=loop, current_epoch=0
    )
    return module.train_dataloader()


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_disjoint_equal_shares(stream, workers):
    module = data(stream, augment=False, num_workers=workers, batch_size=4)
    module.setup()
    shares = [[i for images, _ in rank_loader(module, rank) for i in identities(images)] for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 16  # 36 training images: 4 batches of 4 per rank
    assert not set(shares[0]) & set(shares[1]) and len(set(shares[0] + shares[1])) == 32
    val = {i for images, _ in module.ordered_loader("val") for i in identities(images)}
    assert not val & set(shares[0] + shares[1])


@pytest.mark.slow  # three 2-process CPU DDP runs: a minute on two cores
def test_two_process_ddp_mid_epoch_resume_equals_the_straight_run(gray_teacher_dir, stream, tmp_path):
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    for root, steps in (("straight", -1), ("first", 3)):
        args = streaming_args(gray_teacher_dir, stream, tmp_path / root, *ddp, f"--trainer.max_steps={steps}",
                              "--trainer.callbacks.init_args.every_n_train_steps=1", cut=True)  # fmt: skip
        done = run_repfusion(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    first = tmp_path / "first" / "last.ckpt"
    done = run_repfusion("fit", f"--ckpt_path={first}", "--trainer.max_steps=-1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    compare_checkpoints(tmp_path / "straight" / "last.ckpt", first, steps=6)


def streaming_args(teacher: Path, stream: Path, root: Path, *extra: str, cut: bool = False) -> list[str]:
    """configs/distill.yaml, two steps an epoch (tests/conf/distill_resume.yaml), streaming ``stream``.

    ``cut``: a run that its budget cuts short and a resume extends (tests/conf/budget_cut.yaml).
    """
    confs = ("distill_resume.yaml", "streaming_tiny.yaml", *(("budget_cut.yaml",) if cut else ()))
    return distill_command(teacher, root, confs, f"--data.init_args.input_dir={stream}",
                           "--trainer.max_epochs=3", *extra)  # fmt: skip


def test_a_sigterm_then_ckpt_path_ends_equal_to_the_straight_run(gray_teacher_dir, stream, tmp_path):
    main(streaming_args(gray_teacher_dir, stream, tmp_path / "straight"))
    args = streaming_args(gray_teacher_dir, stream, tmp_path / "run")
    stopped = subprocess.run(
        [sys.executable, str(HERE / "kill_points.py"), "sigterm", "2", "--", *args], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HERE)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = tmp_path / "run" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 3  # mid-epoch 1
    main(["fit", f"--ckpt_path={last}"])  # the checkpoint alone: its config comes with it
    compare_checkpoints(tmp_path / "straight" / "last.ckpt", last, steps=6)
    # The same checkpoint over another cut of the data is refused, with what differs.
    with pytest.raises(
        StreamChangedError, match=r"(?s)images: the checkpoint's 36, this run's 24.*without --ckpt_path"
    ):
        main([*args, "--data.init_args.val_fraction=0.5", f"--ckpt_path={last}", "--trainer.max_epochs=4"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: None, None),
        (lambda p: (p / "index.json").unlink(), r"no index\.json \(not optimized\).*repfusion optimize"),
        (lambda p: (p / "index.json").rename(p / "0-index.json"), r"worker index shards.*stopped early"),
        (lambda p: (p / "chunk-0-1.bin").unlink(), r"incomplete.*missing chunk .*chunk-0-1\.bin"),
        (lambda p: (p / "chunk-0-2.bin").write_bytes(b"x"), r"truncated chunk .*chunk-0-2\.bin \(1 of"),
        (lambda p: shutil.rmtree(p), r"does not exist.*repfusion optimize"),
    ],
    ids=["intact", "not-optimized", "optimize-stopped", "missing-chunk", "truncated-chunk", "no-folder"],
)
def test_a_folder_that_is_not_a_complete_optimized_dataset_is_named(stream, tmp_path, damage, message):
    folder = Path(shutil.copytree(stream, tmp_path / "copy"))
    damage(folder)
    if message is None:
        data(folder)
        return
    before = sorted(os.listdir(folder)) if folder.exists() else None
    with pytest.raises(DatasetNotFoundError, match=f"(?s){message}"):
        data(folder)
    assert (sorted(os.listdir(folder)) if folder.exists() else None) == before  # nothing written


def test_bad_fields_labels_and_outputs_are_refused(stream, tmp_path, capsys):
    unlabelled = optimize(write_images(tmp_path / "flat", labelled=False, count=6), tmp_path / "unlabelled")
    with pytest.raises(
        ValueError, match=r"no 'label' field \(its fields: \['image', 'name'\]\).*labels: false"
    ):
        data(unlabelled)
    data(unlabelled, labels=False, val_fraction=0.5)
    with pytest.raises(ValueError, match=r"image_key 'pixels' is not a field .*\['image', 'label', 'name'\]"):
        data(stream, image_key="pixels")
    with pytest.raises(SystemExit):  # the output holds a dataset already
        main(["optimize", str(tmp_path / "flat"), str(stream)])
    assert "exists and is not empty" in capsys.readouterr().err
    (tmp_path / "flat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        main(["optimize", str(tmp_path / "flat"), str(tmp_path / "out"), "--num_workers=1"])
    assert f"cannot decode image {tmp_path / 'flat' / 'broken.png'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_manuals_example_is_the_shipped_config():
    page = (ROOT / "docs" / "data.md").read_text()
    block = page.split("<!-- snippet: on configs/examples/litdata-distill.yaml -->\n```yaml\n", 1)[1]
    shipped = (ROOT / "configs" / "examples" / "litdata-distill.yaml").read_text()
    assert yaml.safe_load(block.split("```", 1)[0]) == yaml.safe_load(shipped)


def test_the_throughput_benchmark_quick_run(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "data_throughput.py"), "--quick",
               "--results-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "data-throughput-quick.json").read_text())
    routes = {row["route"] for row in result["images"]}
    assert routes == {"image folder", "Hugging Face parquet", "LitData stream"}
    assert {row["store"] for row in result["targets"]} == {".npy target store", "LitData dataset"}
    assert "| LitData stream |" in (tmp_path / "data-throughput-quick.md").read_text()
