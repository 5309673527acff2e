"""The real `repfusion` CLI driven with the project's own YAML configs, on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from repfusion_pl.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def train_tiny_teacher(out: Path) -> Path:
    """configs/teacher.yaml shrunk to an 8 px, 8/16-channel UNet and a few steps."""
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/teacher.yaml"),
            *QUIET,
            f"--model.init_args.output_dir={out / 'teacher'}",
            "--model.init_args.sample_size=8",
            "--model.init_args.block_out_channels=[8, 16]",
            "--model.init_args.attention_levels=[1]",
            "--model.init_args.norm_num_groups=4",
            "--data.init_args.image_size=8",
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={out / 'teacher-runs'}",
        ]
    )
    return out / "teacher"


@pytest.fixture(scope="module")
def cli_teacher(tmp_path_factory) -> Path:
    return train_tiny_teacher(tmp_path_factory.mktemp("cli"))


def distill_args(teacher: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "configs/distill.yaml"),
        *QUIET,
        f"--model.init_args.teacher.init_args.source={teacher}",
        "--data.init_args.image_size=8",
        "--data.init_args.batch_size=16",
        f"--trainer.default_root_dir={root}",
        # Checkpoints go under the test's folder, never into the repository's artifacts/.
        f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
        *extra,
    ]


def test_teacher_config_writes_a_loadable_pipeline(cli_teacher):
    assert (cli_teacher / "unet" / "config.json").is_file()
    assert (cli_teacher / "scheduler" / "scheduler_config.json").is_file()


def test_distill_config_runs_fast_dev_run(cli_teacher, tmp_path):
    main(distill_args(cli_teacher, tmp_path, "--trainer.fast_dev_run=2"))


def test_distill_leaves_a_teacher_free_checkpoint_that_resumes(cli_teacher, tmp_path):
    args = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    main(distill_args(cli_teacher, tmp_path, *args))
    last = next(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    # Hyperparameters travel with the checkpoint as a class_path config: the teacher comes back from source.
    hparams = checkpoint["hyper_parameters"]
    assert hparams["teacher"]["init_args"]["source"] == str(cli_teacher)
    assert hparams["sampler"]["class_path"] == "repfusion_pl.PolicyTimestep"
    resumed = tmp_path / "resumed"
    main(
        distill_args(
            cli_teacher,
            resumed,
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            f"--ckpt_path={last}",
        )
    )
    final = torch.load(next(resumed.rglob("last.ckpt")), weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 6
    assert int(final["state_dict"]["sampler.epoch"]) == 1


def test_print_config_is_complete_and_typed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config", "--config", str(ROOT / "configs/distill.yaml")])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert set(model["teacher"]["init_args"]) == {
        "source",
        "layers",
        "input_range",
        "mode",
        "class_label_map",
        "revision",
    }
    assert model["sampler"]["init_args"]["baseline"] == "batch_mean"
    assert {"entropy_weight", "entropy_end_epoch", "baseline_momentum"} <= set(model["sampler"]["init_args"])
    assert model["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["data"]["init_args"]["image_size"] == 16


def test_a_missing_required_argument_gets_the_parsers_message(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "configs/distill.yaml").read_text())
    del config["model"]["init_args"]["teacher"]["init_args"]["source"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code != 0
    assert "the following arguments are required: source" in capsys.readouterr().err


def test_an_unknown_class_path_is_reported(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "configs/distill.yaml").read_text())
    config["model"]["init_args"]["sampler"]["class_path"] = "repfusion_pl.PolicyTimestepp"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path)])
    assert "PolicyTimestepp" in capsys.readouterr().err


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "repfusion_pl.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_ddp_on_cpu_then_resume(cli_teacher, tmp_path):
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    short = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    first = run_cli(
        *distill_args(cli_teacher, tmp_path / "a", *ddp, *short, "--trainer.max_epochs=1"), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    last = next((tmp_path / "a").rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 2
    second = run_cli(
        *distill_args(
            cli_teacher, tmp_path / "b", *ddp, *short, "--trainer.max_epochs=2", f"--ckpt_path={last}"
        ),
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(next((tmp_path / "b").rglob("last.ckpt")), weights_only=True)["global_step"] == 4


@pytest.fixture(scope="module")
def cli_distilled(cli_teacher, tmp_path_factory) -> Path:
    """configs/distill.yaml run for two steps on the tiny teacher; returns its last.ckpt."""
    root = tmp_path_factory.mktemp("distilled")
    main(
        distill_args(
            cli_teacher,
            root,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
        )
    )
    return root / "ckpts" / "last.ckpt"


def test_distill_export_classify_from_yaml(cli_distilled, tmp_path):
    exported = tmp_path / "resnet18.safetensors"
    main(["export", str(cli_distilled), str(exported)])
    for weights in (cli_distilled, exported):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/classify.yaml"),
                *QUIET,
                f"--model.init_args.backbone_weights={weights}",
                "--data.init_args.image_size=8",
                "--trainer.fast_dev_run=2",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


def test_the_readme_custom_task_runs_through_the_cli(cli_distilled, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n# my_task.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_task.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    main(
        [
            "fit",
            "--model",
            "my_task.CosineClassifierTask",
            "--model.num_classes=10",
            f"--model.backbone_weights={cli_distilled}",
            "--data",
            "repfusion_pl.data.DigitsDataModule",
            "--data.image_size=8",
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            *QUIET,
        ]
    )


@pytest.fixture(scope="module")
def cli_shapes_distilled(tmp_path_factory) -> Path:
    """configs/shapes-distill.yaml for two steps on a tiny 16 px RGB teacher."""
    from conftest import make_tiny_unet, save_pipeline

    root = tmp_path_factory.mktemp("shapes")
    teacher = save_pipeline(root / "teacher", make_tiny_unet(3, sample_size=16))
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/shapes-distill.yaml"),
            *QUIET,
            f"--model.init_args.teacher.init_args.source={teacher}",
            "--trainer.max_steps=2",
            "--data.init_args.image_size=16",
            "--data.init_args.num_train=32",
            "--data.init_args.batch_size=8",
            f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
            f"--trainer.default_root_dir={root}",
        ]
    )
    return root / "ckpts" / "last.ckpt"


@pytest.mark.parametrize("config", ["segment.yaml", "landmarks.yaml"])
def test_distill_then_dense_task_from_yaml(cli_shapes_distilled, tmp_path, config):
    size = ["--model.init_args.image_size=16"] if config == "landmarks.yaml" else []
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            *QUIET,
            *size,
            f"--model.init_args.backbone_weights={cli_shapes_distilled}",
            "--data.init_args.image_size=16",
            "--data.init_args.num_train=16",
            "--data.init_args.batch_size=8",
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs" / "paper").glob("*.yaml")))
def test_paper_recipes_parse_into_complete_configs(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config", "--config", str(ROOT / "configs" / "paper" / config)])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("repfusion_pl.")
    assert (printed["trainer"]["max_epochs"] or 0) > 0 or printed["trainer"]["max_steps"] > 0
