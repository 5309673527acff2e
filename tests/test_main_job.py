"""The main job (`make distill`): the shipped Fashion-MNIST subset, its config and fine-tuning config
through the real CLI on a tiny teacher, and the monitor's last line (the verdict against its noise)."""

import logging
import math
from pathlib import Path

import pytest
import torch

from conftest import CONF, ROOT, make_tiny_unet, save_pipeline
from repfusion_pl.cli import main
from repfusion_pl.data import FashionMNISTDataModule
from repfusion_pl.data.fashion_mnist import EMBEDDED_ROOT, load_fashion_mnist
from repfusion_pl.probing.verdict import sampling_error, verdict, verdict_line


def test_the_shipped_subset_is_balanced_and_read_by_the_full_sets_reader() -> None:
    for split, per_class in (("train", 700), ("test", 100)):
        images, labels = load_fashion_mnist(EMBEDDED_ROOT, split)
        assert images.shape == (10 * per_class, 1, 28, 28) and images.dtype == torch.uint8
        assert torch.bincount(labels).tolist() == [per_class] * 10
        assert images.float().std() > 50  # real clothes, not blank or constant images
    data = FashionMNISTDataModule(root="embedded", image_size=32, num_val=1000)
    data.setup("fit")
    assert {name: len(split) for name, split in data.splits.items()} == {
        "train": 6000,
        "val": 1000,
        "test": 1000,
    }
    assert data.splits["train"][0][0].shape == (1, 32, 32)


def test_verdict_golden_values() -> None:
    assert sampling_error(0.8, 1000) == pytest.approx(math.sqrt(0.16 / 1000))
    found = verdict(0.80, {"val_acc": 0.77, "std": 0.01}, 1000)
    noise = math.sqrt(0.8 * 0.2 / 1000 + 0.77 * 0.23 / 1000 + 0.01**2)
    assert found["gap"] == pytest.approx(0.03)
    assert found["noise"] == pytest.approx(noise)
    assert found["gap_over_noise"] == pytest.approx(0.03 / noise)
    line = verdict_line(
        {"student": 0.80, "teacher": 0.81, "t": 200}, {"val_acc": 0.77, "std": 0.01, "inits": 3}, 1000
    )
    assert "student 0.800" in line and "random bar 0.770 ± 0.010 over 3 inits" in line
    assert "teacher 0.810 (t=200)" in line and "3.0 points above the bar" in line
    below = verdict_line({"student": 0.70}, {"val_acc": 0.77}, 500)
    assert "7.0 points below the bar" in below and "inits" not in below


class Lines(logging.Handler):
    """Every message logged while attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def main_job_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("main-job")
    teacher = save_pipeline(root / "teacher", make_tiny_unet(1, sample_size=32))
    lines, logger = Lines(), logging.getLogger("lightning.pytorch")
    logger.addHandler(lines)
    try:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "fashion-distill.yaml"),
                "--config",
                str(CONF / "fashion_distill_tiny.yaml"),
                f"--model.init_args.teacher.init_args.source={teacher}",
                f"--trainer.default_root_dir={root}",
                f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
            ]
        )
    finally:
        logger.removeHandler(lines)
    return root, lines.messages


def test_main_job_ends_with_student_bar_and_teacher(main_job_run: tuple[Path, list[str]]) -> None:
    root, messages = main_job_run
    lines = [m for m in messages if "last probe" in m]
    assert len(lines) == 1
    assert "random bar" in lines[0] and "over 2 inits" in lines[0] and "teacher" in lines[0]
    assert "x the monitor's noise" in lines[0]
    assert list(root.rglob("representation_probe.png"))


def test_the_bar_is_the_mean_of_its_inits_and_teacher_scores_are_kept(
    main_job_run: tuple[Path, list[str]],
) -> None:
    checkpoint = torch.load(main_job_run[0] / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("RepresentationMonitor"))
    bar = state["random_bar"]
    assert bar["inits"] == 2 and len(bar["scores"]) == 2
    assert bar["val_acc"] == pytest.approx(sum(bar["scores"]) / 2)
    assert bar["std"] == pytest.approx(float(torch.tensor(bar["scores"]).std()))
    # The teacher is probed once per timestep: every evaluation's timestep has its one kept score.
    assert set(state["teacher_scores"]) == {entry["t"] for entry in state["history"]}
    assert all(entry["teacher"] == state["teacher_scores"][entry["t"]] for entry in state["history"])


def test_fashion_classify_fine_tunes_the_main_jobs_student(
    main_job_run: tuple[Path, list[str]], tmp_path: Path
) -> None:
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "fashion-classify.yaml"),
            f"--model.init_args.backbone_weights={main_job_run[0] / 'ckpts' / 'last.ckpt'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=2",
        ]
    )
