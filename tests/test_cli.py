"""The real `repfusion` CLI driven with the project's own YAML configs, on tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONF, ROOT, distill_command, run_repfusion, shapes_distill_command
from repfusion_pl.cli import SUBCOMMANDS, main


def train_tiny_teacher(out: Path) -> Path:
    """configs/teacher.yaml shrunk by tests/conf/teacher_tiny.yaml."""
    teacher = ["--config", str(ROOT / "configs/teacher.yaml"), "--config", str(CONF / "teacher_tiny.yaml")]
    main(
        [
            "fit",
            *teacher,
            f"--model.init_args.output_dir={out / 'teacher'}",
            f"--trainer.default_root_dir={out / 'teacher-runs'}",
        ]
    )
    return out / "teacher"


@pytest.fixture(scope="module")
def cli_teacher(tmp_path_factory) -> Path:
    return train_tiny_teacher(tmp_path_factory.mktemp("cli"))


def distill_args(teacher: Path, root: Path, *extra: str) -> list[str]:
    return distill_command(teacher, root, "distill_tiny.yaml", *extra, checkpoints=root / "ckpts")


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
    assert len(checkpoint["callbacks"]["TimestepTelemetry"]["history"]) == 1  # one epoch recorded
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
        "class_names",
        "revision",
        "family",
        "prompt",
        "image_size",
        "truncate",
        "inference_mode",
        "compile",
    }
    student = {"arch", "library", "stem", "in_channels", "taps", "compile", "pretrained", "weights"}
    assert set(model["student"]["init_args"]) == student
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
    printed = capsys.readouterr().err
    said = "model.init_args.teacher (repfusion_pl.DiffusionTeacher): the following arguments are required"
    assert f"{said}: source" in printed


def test_an_unknown_class_path_is_reported(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "configs/distill.yaml").read_text())
    config["model"]["init_args"]["sampler"]["class_path"] = "repfusion_pl.PolicyTimestepp"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path)])
    assert "PolicyTimestepp" in capsys.readouterr().err


def test_two_process_ddp_on_cpu_then_resume(cli_teacher, tmp_path):
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    short = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    first = run_repfusion(
        *distill_args(cli_teacher, tmp_path / "a", *ddp, *short, "--trainer.max_epochs=1"), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    last = next((tmp_path / "a").rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 2
    second = run_repfusion(
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
    main(distill_args(cli_teacher, root, "--trainer.max_steps=2", "--trainer.limit_val_batches=1"))
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
                "--config",
                str(CONF / "classify_tiny.yaml"),
                f"--model.init_args.backbone_weights={weights}",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


def test_the_docs_custom_task_runs_through_the_cli(cli_distilled, tmp_path, monkeypatch):
    page = (ROOT / "docs" / "tasks.md").read_text()
    code = page.split("```python\n# my_task.py\n", 1)[1].split("```", 1)[0]
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
            "--trainer.enable_progress_bar=false",
        ]
    )


@pytest.fixture(scope="module")
def cli_shapes_distilled(tmp_path_factory) -> Path:
    """configs/shapes-distill.yaml for two steps on a tiny 16 px RGB teacher."""
    from conftest import make_tiny_unet, save_pipeline

    root = tmp_path_factory.mktemp("shapes")
    teacher = save_pipeline(root / "teacher", make_tiny_unet(3, sample_size=16))
    main(shapes_distill_command(teacher, root))
    return root / "ckpts" / "last.ckpt"


@pytest.mark.parametrize("config", ["segment.yaml", "landmarks.yaml"])
def test_distill_then_dense_task_from_yaml(cli_shapes_distilled, tmp_path, config):
    size = ["--model.init_args.image_size=16"] if config == "landmarks.yaml" else []
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            "--config",
            str(CONF / "dense_task_tiny.yaml"),
            *size,
            f"--model.init_args.backbone_weights={cli_shapes_distilled}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )


RECIPE_CONFIGS = sorted(
    f"{d}/{p.name}" for d in ("paper", "examples") for p in (ROOT / "configs" / d).glob("*.yaml")
)


@pytest.mark.parametrize("config", RECIPE_CONFIGS)
def test_paper_recipes_and_family_examples_parse_into_complete_configs(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config", "--config", str(ROOT / "configs" / config)])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("repfusion_pl.")
    assert (printed["trainer"]["max_epochs"] or 0) > 0 or printed["trainer"]["max_steps"] > 0


def test_help_lists_every_subcommand_with_a_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert set(SUBCOMMANDS) == {
        "fit",
        "validate",
        "test",
        "probe",
        "cache",
        "export",
        "embed",
        "optimize",
        "convert-adm",
    }  # no `predict`: no module defines predict_step, so the CLI does not offer it
    for name, subcommand in SUBCOMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(subcommand.summary[:30])}", printed, re.M), name


@pytest.mark.parametrize(
    "name", ["fit", "validate", "test", "probe", "cache", "export", "embed", "optimize", "convert-adm"]
)
def test_every_subcommand_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert re.match(rf"usage: repfusion (\[options\] )?{name}\b", printed), printed[:200]
    assert "--config" in printed or name == "export"


def test_an_unknown_subcommand_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fitt'" in capsys.readouterr().err


def test_a_normal_run_prints_no_warning_of_ours(cli_teacher, tmp_path):
    done = run_repfusion(*distill_args(cli_teacher, tmp_path, "--trainer.fast_dev_run=1"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # Lightning may advise on the user's set-up (e.g. loader workers); nothing may come from us, nor
    # LightningCLI's warning about `args`, which `main` always passes.
    assert "args parameter is intended" not in done.stderr
    assert not re.search(r"repfusion_pl/\S+\.py:\d+: \w*Warning", done.stderr), done.stderr[-3000:]


def test_debug_keeps_the_traceback_of_a_build_error(tmp_path):
    gone = f"--model.init_args.backbone_weights={tmp_path / 'gone.ckpt'}"
    with pytest.raises(Exception, match="gone.ckpt") as raised:
        main(["--debug", "fit", "--config", str(ROOT / "configs/classify.yaml"), gone])
    assert not isinstance(raised.value, SystemExit)


def test_a_worker_error_reads_as_with_no_workers(tmp_path):
    from PIL import Image

    from repfusion_pl.data.files import CorruptImageError

    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (50 * i, 0, 0)).save(root / cls / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    messages = {}
    for workers in (0, 2):
        args = [
            "fit",
            "--model=repfusion_pl.ClassificationTask",
            "--model.num_classes=2",
            "--data=repfusion_pl.data.ImageFolderDataModule",
            f"--data.root={root}",
            "--data.image_size=8",
            "--data.batch_size=12",
            f"--data.num_workers={workers}",
            "--data.val_fraction=0.0",
            "--data.test_fraction=0.0",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
        with pytest.raises(CorruptImageError) as raised:
            main(args)
        messages[workers] = str(raised.value)
    assert messages[0].startswith("cannot decode image") and "broken.png" in messages[0]
    assert messages[2] == messages[0]


def test_a_second_run_replaces_last_ckpt_and_tasks_say_what_they_load(cli_teacher, tmp_path, caplog):
    import logging

    for run in range(2):
        main(distill_args(cli_teacher, tmp_path, "--trainer.max_steps=1", f"--seed_everything={run}"))
    assert sorted(p.name for p in (tmp_path / "ckpts").glob("last*.ckpt")) == ["last.ckpt"]
    saved = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)
    assert saved["repfusion_config"].count("seed_everything: 1") == 1  # the second run's
    with caplog.at_level(logging.INFO):
        ClassificationTask = __import__("repfusion_pl").ClassificationTask
        ClassificationTask(10, backbone_weights=str(tmp_path / "ckpts" / "last.ckpt"))
    line = next(r.message for r in caplog.records if r.message.startswith("loaded backbone weights"))
    assert "resnet18/cifar-stem student" in line and "PolicyTimestep(reward=TaskHeadReward" in line
    assert f"saved {saved['repfusion']['saved_at']}" in line


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--trainer.max_epochs", "ten"], "trainer.max_epochs: given 'ten', which is not int or None"),
        (
            ["--model.init_args.feature_loss.init_args.weight", "heavy"],
            "model.init_args.feature_loss.init_args.weight: given 'heavy', which is not float",
        ),
    ],
)
def test_a_bad_value_is_one_line_with_its_key_and_debug_keeps_the_full_report(args, said, capsys):
    base = ["fit", "--config", str(ROOT / "configs/distill.yaml"), *args, "--print_config"]
    for debug in (False, True):
        with pytest.raises(SystemExit):
            main(["--debug", *base] if debug else base)
        err = capsys.readouterr().err
        assert ("Union subtypes" in err) == debug and (said in err) != debug, err
        assert "--print_config" in err


def test_a_command_line_checkpoint_callback_also_leaves_the_newest_run_in_last_ckpt(cli_teacher, tmp_path):
    # The command: the user's own ModelCheckpoint, without enable_version_counter, run twice.
    own = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    own["init_args"] = {"dirpath": str(tmp_path / "ck"), "save_last": True}
    for steps in (3, 1):
        main(
            distill_args(cli_teacher, tmp_path, f"--trainer.max_steps={steps}")
            + [f"--trainer.callbacks=[{json.dumps(own)}]"]
        )
    assert sorted(p.name for p in (tmp_path / "ck").glob("last*.ckpt")) == ["last.ckpt"]
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 1
