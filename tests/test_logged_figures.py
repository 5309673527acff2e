"""Figures go to every configured logger as well as to files; TensorBoard is optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger

from conftest import distill_command
from repfusion_pl.cli import main
from repfusion_pl.logged_figures import log_figure, log_histogram, save_figure

SHORT_RUN = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1")
FIGURES = ("timesteps.png", "representation_probe.png")


def distil_with_logger(teacher: Path, root: Path, logger: dict | None) -> Path:
    """Two steps of the tiny distillation; ``trainer.logger`` from YAML (``None``: Lightning's default)."""
    extra: tuple[str, ...] = ()
    if logger is not None:
        conf = root / "logger.yaml"
        root.mkdir(parents=True, exist_ok=True)
        conf.write_text(yaml.safe_dump({"trainer": {"logger": logger}}))
        extra = ("--config", str(conf))
    main(distill_command(teacher, root, ("distill_tiny.yaml", "quiet.yaml"), *extra, *SHORT_RUN))
    return root / "lightning_logs" / "version_0"


def a_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(2, 2))
    axis.plot([0, 1], [1, 0])
    return fig


@pytest.mark.parametrize("logger", ["yaml", "default"])
def test_without_tensorboard_a_csv_run_writes_the_figures(logger, gray_teacher_dir, tmp_path, monkeypatch):
    # TensorBoard "uninstalled": importing it fails, and Lightning's default logger is the CSVLogger.
    for module in ("tensorboard", "tensorboardX", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)
    import lightning.pytorch.trainer.connectors.logger_connector.logger_connector as connector

    monkeypatch.setattr(connector, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(connector, "_TENSORBOARDX_AVAILABLE", False)
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    log_dir = distil_with_logger(gray_teacher_dir, tmp_path, csv if logger == "yaml" else None)
    for name in FIGURES:
        assert (log_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert "probe/student" in (log_dir / "metrics.csv").read_text().splitlines()[0]


def test_a_tensorboard_run_receives_the_figures_and_the_histogram(gray_teacher_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path)},
    }
    log_dir = distil_with_logger(gray_teacher_dir, tmp_path, board)
    for name in FIGURES:
        assert (log_dir / name).is_file()
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0})
    tags = events.Reload().Tags()
    assert {"figures/timesteps", "figures/representation_probe"} <= set(tags["images"])
    assert "train/timesteps" in tags["histograms"]
    assert events.Images("figures/timesteps")[0].height > 100


class FakeWandb(WandbLogger):
    """A WandbLogger that records ``log_image`` instead of needing wandb (not installed here)."""

    def __init__(self) -> None:
        self.images: list[tuple] = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


class FakeMlflowClient:
    def __init__(self) -> None:
        self.figures: list[tuple] = []

    def log_figure(self, run_id, figure, artifact_file):
        self.figures.append((run_id, figure, artifact_file))


class FakeMlflow(MLFlowLogger):
    """An MLFlowLogger whose client records ``log_figure`` instead of needing mlflow (not installed here)."""

    def __init__(self) -> None:
        self.client, self._run_id = FakeMlflowClient(), "run-7"

    @property
    def experiment(self):
        return self.client


def test_wandb_and_mlflow_get_the_figure_through_their_own_api_and_csv_the_file(tmp_path):
    import matplotlib.pyplot as plt

    wandb, mlflow, csv = FakeWandb(), FakeMlflow(), CSVLogger(tmp_path)
    figure = a_figure()
    path = save_figure(figure, tmp_path / "out" / "curve.png", [wandb, mlflow, csv], "figures/curve", step=12)
    assert path.read_bytes()[:4] == b"\x89PNG" and plt.get_fignums() == []  # written, then closed
    ((key, images, step),) = wandb.images
    assert (key, step) == ("figures/curve", 12)
    assert images[0].dtype.name == "uint8" and images[0].shape == (200, 200, 3)  # 2 in at 100 dpi, RGB
    assert mlflow.client.figures == [("run-7", figure, "figures/curve.png")]
    assert log_figure([csv], "x", a_figure()) == []  # the CSV logger keeps the file only
    assert log_histogram([wandb, mlflow, csv], "x", torch.arange(3)) == []  # TensorBoard's alone
    plt.close("all")
    # Dispatching never imported the optional libraries.
    assert not {"wandb", "mlflow"} & set(sys.modules)


def test_nothing_imports_tensorboard_wandb_or_mlflow_at_import_time():
    code = (
        "import sys, repfusion_pl, repfusion_pl.cli, repfusion_pl.logged_figures, repfusion_pl.probing\n"
        "optional = {'tensorboard', 'tensorboardX', 'wandb', 'mlflow'}\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & optional\n"
        "loaded |= {m for m in sys.modules if m == 'torch.utils.tensorboard'}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
