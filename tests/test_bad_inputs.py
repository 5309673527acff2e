"""Every bad input ends in one message naming the problem and the fix; no earlier output is touched.

Each row: a name, what triggers it (given the shared fixtures), the regex the message must match for
the problem, and the one for the fix. Every case points its outputs at a folder holding an earlier
run's files; none of them may change. The troubleshooting table of docs/resuming.md is built from
these rows.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import distill_command
from repfusion_pl import (
    BackboneSpec,
    DiffusionTeacher,
    FixedTimestep,
    PolicyTimestep,
    RepFusionDistillation,
    Student,
)
from repfusion_pl.cli import main
from repfusion_pl.data import ImageFolderDataModule
from repfusion_pl.distillation.losses import DenseMSELoss
from repfusion_pl.students.weights import export_backbone, read_backbone_weights
from repfusion_pl.tasks import ClassificationTask
from repfusion_pl.teachers.sizes import OffSizeWarning

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Env:
    """What the cases share: a tiny teacher, a distillation checkpoint and an earlier run's folder."""

    teacher: Path
    checkpoint: Path
    earlier: Path
    tmp: Path
    capsys: pytest.CaptureFixture


def cli_message(env: Env, *args: str) -> str:
    """Run ``repfusion`` in-process; return what it printed on failing (or the exception's text)."""
    try:
        main(list(args))
    except SystemExit as exit_info:
        assert exit_info.code not in (0, None), "the command succeeded"
        return env.capsys.readouterr().err
    raise AssertionError("the command succeeded")


def distill_cli(env: Env, *extra: str) -> list[str]:
    return distill_command(env.teacher, env.earlier, "distill_one_step.yaml", *extra)


def yaml_override(env: Env, name: str, edit: Callable[[dict], None]) -> str:
    config = yaml.safe_load((ROOT / "configs/distill.yaml").read_text())
    edit(config)
    path = env.tmp / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def image_folder(env: Env, corrupt: bool = False, empty: bool = False) -> Path:
    root = env.tmp / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        if not empty:
            Image.new("RGB", (8, 8), (200, 0, 0)).save(root / cls / "a.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def classify(env: Env, batch: tuple[torch.Tensor, torch.Tensor], **kwargs) -> None:
    task = ClassificationTask(num_classes=3, backbone=BackboneSpec(**{"in_channels": 1, **kwargs}))
    task.training_step(batch, 0)


def unknown_class_path(env: Env) -> str:
    return cli_message(
        env, *distill_cli(env, "--model.init_args.sampler.class_path=repfusion_pl.PolicyTimestepp")
    )


def wrong_type_in_yaml(env: Env) -> str:
    path = yaml_override(env, "typed.yaml", lambda c: c["trainer"].update(max_epochs="ten"))
    return cli_message(
        env, "fit", "--config", path, f"--model.init_args.teacher.init_args.source={env.teacher}"
    )


def missing_teacher(env: Env) -> str:
    return cli_message(
        env, *distill_cli(env, f"--model.init_args.teacher.init_args.source={env.tmp / 'nowhere'}")
    )


def unknown_teacher_layer(env: Env) -> None:
    DiffusionTeacher(str(env.teacher), layers=["mid_block.resnet.1"])


def dense_maps_cannot_match(env: Env) -> None:
    teacher = DiffusionTeacher(str(env.teacher), layers=["mid_block.resnets.1.conv2"])
    student = Student(
        "resnet18", stem="imagenet", in_channels=1
    )  # 1x1 at 8 px: nothing to compare per position
    RepFusionDistillation(teacher, student, FixedTimestep(0), DenseMSELoss())


def student_channels_differ_from_teacher(env: Env) -> None:
    RepFusionDistillation(
        DiffusionTeacher(str(env.teacher)), Student("resnet18", in_channels=3), FixedTimestep(0)
    )


def policy(env: Env, sampler: PolicyTimestep, **module_options) -> None:
    teacher = DiffusionTeacher(str(env.teacher), layers=["mid_block.resnets.1.conv2"])
    RepFusionDistillation(teacher, Student("resnet18", in_channels=1), sampler, **module_options)


def entropy_schedule_outside_the_run(env: Env) -> None:
    policy(env, PolicyTimestep(num_classes=3, entropy_end=1.5))


def unsorted_policy_grid(env: Env) -> None:
    policy(env, PolicyTimestep(num_classes=3, grid=[100, 0, 50]))


def reward_layer_not_tapped(env: Env) -> None:
    policy(env, PolicyTimestep(num_classes=3), head_layer="up_blocks.0.resnets.0")


def sampler_lr_for_a_fixed_timestep(env: Env) -> None:
    policy(env, FixedTimestep(0), sampler_lr=0.01)


def dataset_folder_missing(env: Env) -> None:
    ImageFolderDataModule(str(env.tmp / "no-such-folder")).setup("fit")


def dataset_folder_empty(env: Env) -> None:
    ImageFolderDataModule(str(image_folder(env, empty=True))).setup("fit")


def dataset_corrupt_image(env: Env) -> None:
    data = ImageFolderDataModule(str(image_folder(env, corrupt=True)), image_size=8, val_fraction=0.0)
    data.setup("fit")
    for index in range(len(data.splits["train"])):
        data.splits["train"][index]


def label_outside_num_classes(env: Env) -> None:
    classify(env, (torch.rand(2, 1, 16, 16), torch.tensor([0, 7])))


def grey_data_rgb_model(env: Env) -> None:
    classify(env, (torch.rand(2, 1, 16, 16), torch.tensor([0, 1])), in_channels=3)


def rgb_data_grey_model(env: Env) -> None:
    classify(env, (torch.rand(2, 3, 16, 16), torch.tensor([0, 1])), in_channels=1)


def grey_data_rgb_distillation(env: Env) -> None:
    module = RepFusionDistillation(
        DiffusionTeacher(str(env.teacher)), Student("resnet18", in_channels=1), FixedTimestep(0)
    )
    module.training_step((torch.rand(2, 3, 16, 16), torch.tensor([0, 1])), 0)


def non_finite_loss(env: Env) -> None:
    module = RepFusionDistillation(
        DiffusionTeacher(str(env.teacher)), Student("resnet18", in_channels=1), FixedTimestep(0)
    )
    with torch.no_grad():
        module.projectors[0].bias.fill_(float("inf"))
    module.training_step((torch.rand(2, 1, 16, 16), torch.tensor([0, 1])), 0)


def checkpoint_from_another_architecture(env: Env) -> None:
    resnet34 = BackboneSpec("resnet34", in_channels=1)
    ClassificationTask(num_classes=3, backbone=resnet34, backbone_weights=str(env.checkpoint))


def export_into_the_wrong_model(env: Env) -> None:
    exported = export_backbone(env.checkpoint, env.tmp / "backbone.safetensors")
    imagenet_stem = BackboneSpec(stem="imagenet", in_channels=1)
    ClassificationTask(num_classes=3, backbone=imagenet_stem, backbone_weights=str(exported))


def truncated_checkpoint(env: Env) -> None:
    truncated = env.tmp / "truncated.ckpt"
    truncated.write_bytes(env.checkpoint.read_bytes()[:2000])
    main(distill_cli(env, f"--ckpt_path={truncated}"))


def resume_into_another_student(env: Env) -> None:
    another = "--model.init_args.student.init_args.arch=resnet34"
    main(distill_cli(env, another, f"--ckpt_path={env.earlier / 'last.ckpt'}"))


def scheduler_interval_not_epoch_or_step(env: Env) -> str:
    return cli_message(env, *distill_cli(env, "--model.init_args.schedule.interval=batch"))


def warmup_longer_than_the_run(env: Env) -> None:
    main(distill_cli(env, "--model.init_args.schedule.warmup_steps=5000"))


def missing_backbone_weights_file(env: Env) -> str:
    classify = ["fit", "--config", str(ROOT / "configs" / "classify.yaml")]
    message = cli_message(env, *classify, f"--model.init_args.backbone_weights={env.tmp / 'gone.ckpt'}")
    assert "Traceback" not in message and "Union subtypes" not in message, message
    return message


def labelled_reward_on_unlabelled_data(env: Env) -> None:
    # The monitor probes on labelled digits, as in configs/distill-no-labels.yaml; the reward gets none.
    digits = "{class_path: repfusion_pl.data.DigitsDataModule, init_args: {image_size: 8}}"
    probe = f"{{data: {digits}, max_images: 32}}"
    monitor = f"[{{class_path: repfusion_pl.RepresentationMonitor, init_args: {probe}}}]"
    main(distill_cli(env, f"--trainer.callbacks={monitor}", "--data.init_args.labels=false"))


def unlabelled_data_for_the_monitor(env: Env) -> None:
    main(distill_cli(env, "--data.init_args.labels=false"))


def recipe_without_its_dataset(env: Env) -> str:
    recipe = ROOT / "configs" / "paper" / "cifar10-classify.yaml"
    return cli_message(
        env,
        "fit",
        "--config",
        str(recipe),
        f"--data.init_args.root={env.tmp / 'cifar10'}",
        "--model.init_args.backbone_weights=null",  # its distilled student is not here either
        "--trainer.accelerator=cpu",
    )


def recipe_without_its_teacher(env: Env) -> str:
    recipe = ROOT / "configs" / "paper" / "celebahq-distill.yaml"
    source = "--model.init_args.teacher.init_args.source=google/ddpm-never-cached"
    return cli_message(env, "fit", "--config", str(recipe), source)


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def pickle_that_runs_code(env: Env) -> None:
    buffer = io.BytesIO()
    pickle.dump({"state_dict": RunsCode()}, buffer)
    path = env.tmp / "evil.ckpt"
    path.write_bytes(buffer.getvalue())
    read_backbone_weights(path)


def teacher_folder_of_no_layout(env: Env) -> None:
    from tiny_pipelines import tiny_vae

    tiny_vae().save_pretrained(env.tmp / "odd" / "vae")
    DiffusionTeacher(str(env.tmp / "odd"))


def text_teacher_without_text_encoder(env: Env) -> None:
    from tiny_pipelines import save_stable_diffusion

    DiffusionTeacher(str(save_stable_diffusion(env.tmp / "sd", text=False)))


def dit_label_not_mapped(env: Env) -> None:
    from tiny_pipelines import IMAGE_SIZE, save_dit

    teacher = DiffusionTeacher(str(save_dit(env.tmp / "dit")), class_label_map={0: 3})
    teacher(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([0, 1]), torch.tensor([0, 1]))


def converter_input_not_guided_diffusion(env: Env) -> str:
    from conftest import make_tiny_unet

    torch.save(make_tiny_unet(3).state_dict(), env.tmp / "unet.pt")  # a diffusers state dict
    out = str(env.earlier / "adm")
    return cli_message(env, "convert-adm", str(env.tmp / "unet.pt"), out, "--config", "imagenet64-cond")


def images_of_another_size(env: Env) -> str:
    # The tiny teacher was trained at 8 px; the data gives 12 px: it runs, with one warning of both sizes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # It runs: into a folder of its own (the earlier run's must not change).
        main(
            distill_command(
                env.teacher, env.tmp / "run", "distill_one_step.yaml", "--data.init_args.image_size=12"
            )
        )
    said = [str(w.message) for w in caught if issubclass(w.category, OffSizeWarning)]
    assert len(said) == 1, said  # once per run, not once per batch
    return said[0]


def a_null_given_on_the_command_line(env: Env) -> str:
    message = cli_message(env, *distill_cli(env, "--model.init_args.sampler.init_args.num_classes", "null"))
    assert "Union subtypes" not in message and "NestedArg" not in message, message
    return message


def a_layer_that_returns_a_tuple(env: Env) -> None:
    from tiny_pipelines import save_stable_diffusion

    DiffusionTeacher(str(save_stable_diffusion(env.tmp / "sd")), layers=["up_blocks.1.attentions.0"])


CASES = [
    (
        "unknown class_path",
        unknown_class_path,
        r"PolicyTimestepp",
        r"did you mean 'repfusion_pl\.PolicyTimestep'",
    ),
    ("wrong type in YAML", wrong_type_in_yaml, r"max_epochs.*\n?.*int|Given value: ten", r"--print_config"),
    ("missing teacher", missing_teacher, r"nowhere.*does not exist", r"expected one of these layouts"),
    ("unknown teacher layer", unknown_teacher_layer, r"mid_block\.resnet\.1", r"mid_block\.resnets\.1"),
    ("dense maps cannot match", dense_maps_cannot_match, r"gives 1x1 and teacher layer", r"PooledMSELoss"),
    (
        "student/teacher channels differ",
        student_channels_differ_from_teacher,
        r"3-channel",
        r"in_channels to 1",
    ),
    ("dataset folder missing", dataset_folder_missing, r"no-such-folder.*does not exist", r"Expected layout"),
    ("dataset folder empty", dataset_folder_empty, r"empty|no image", r"Expected layout"),
    ("corrupt image", dataset_corrupt_image, r"broken\.png", r"cannot decode"),
    (
        "label outside num_classes",
        label_outside_num_classes,
        r"label 7 is outside 0\.\.2",
        r"set num_classes",
    ),
    (
        "grey data, RGB model",
        grey_data_rgb_model,
        r"1-channel images.*3-channel",
        r"in_channels to 1.*repeat",
    ),
    (
        "RGB data, grey model",
        rgb_data_grey_model,
        r"3-channel images.*1-channel",
        r"in_channels to 3.*Grayscale",
    ),
    ("RGB data, grey distillation", grey_data_rgb_distillation, r"3-channel images", r"in_channels to 3"),
    (
        "non-finite loss",
        non_finite_loss,
        r"non-finite distillation loss at step 0",
        r"Lower the learning rate",
    ),
    ("checkpoint from another arch", checkpoint_from_another_architecture, r"do not fit", r"same arch"),
    ("export into the wrong model", export_into_the_wrong_model, r"do not fit", r"same arch, stem"),
    ("truncated checkpoint", truncated_checkpoint, r"truncated", r"Use an intact checkpoint"),
    ("resume into another student", resume_into_another_student, r"made by student", r"--ckpt_path CKPT"),
    (
        "scheduler interval not epoch or step",
        scheduler_interval_not_epoch_or_step,
        r"interval.*batch",
        r"'epoch'.*'step'|epoch.*step",
    ),
    (
        "warm-up longer than the run",
        warmup_longer_than_the_run,
        r"warm-up of 5000.*longer than the run",
        r"lower",
    ),
    (
        "missing backbone_weights file",
        missing_backbone_weights_file,
        r"cannot build model \(repfusion_pl\.ClassificationTask\).*gone\.ckpt.*do not exist",
        r"give a distillation checkpoint",
    ),
    (
        "labelled reward, unlabelled data",
        labelled_reward_on_unlabelled_data,
        r"TaskHeadReward needs labels",
        r"repfusion_pl\.ContrastiveReward",
    ),
    (
        "the monitor on unlabelled data",
        unlabelled_data_for_the_monitor,
        r"RepresentationMonitor probes with labels, but the trainer's data yields images alone",
        r"labelled data module.*distill-no-labels\.yaml",
    ),
    ("recipe without its dataset", recipe_without_its_dataset, r"CIFAR-10 at .*cifar10", r"Expected layout"),
    (
        "recipe without its teacher",
        recipe_without_its_teacher,
        r"ddpm-never-cached",
        r"hf download",
    ),
    (
        "a teacher folder of no known layout",
        teacher_folder_of_no_layout,
        r"no diffusion model found in .*odd: found vae/ \(AutoencoderKL\)",
        r"expected one of these layouts:.*latent_unet.*dit.*convert-adm",
    ),
    (
        "a text-conditioned teacher without its text encoder",
        text_teacher_without_text_encoder,
        r"is text-conditioned \(cross_attention_dim=16\) but has no tokenizer/ or text_encoder/",
        r"copy the whole Stable Diffusion folder",
    ),
    (
        "a DiT with a label the map does not cover",
        dit_label_not_mapped,
        r"dataset labels \[1\] have no entry in class_label_map",
        r"map every label .*leave the map out to condition on its null class",
    ),
    (
        "convert-adm given something other than a guided-diffusion state dict",
        converter_input_not_guided_diffusion,
        r"the checkpoint is a diffusers UNet state dict",
        r"Give the UNet's .pt as openai/guided-diffusion publishes it",
    ),
    (
        "images of another size than the teacher's",
        images_of_another_size,
        r"trained on 8x8 images but is fed 12x12",
        r"data\.init_args\.image_size: 8",
    ),
    (
        "a value of the wrong type on the command line",
        a_null_given_on_the_command_line,
        r"model\.init_args\.sampler\.init_args\.num_classes: given 'None', which is not int or None",
        r"`num_classes: null` in a YAML file and add it with another --config.*--print_config",
    ),
    (
        "a teacher layer that returns a tuple",
        a_layer_that_returns_a_tuple,
        r"'up_blocks\.1\.attentions\.0' returns \w+, not a tensor",
        r"the nearest: \['up_blocks\.1', 'up_blocks\.1\.resnets\.0'",
    ),
    (
        "an entropy schedule beyond the run",
        entropy_schedule_outside_the_run,
        r"PolicyTimestep\.entropy_end=1\.5 is a fraction of the run",
        r"give a value in \(0, 1\]",
    ),
    (
        "a policy grid out of order",
        unsorted_policy_grid,
        r"PolicyTimestep\.grid=\[100, 0, 50\] is not sorted",
        r"list distinct timesteps in increasing order within the teacher's 0\.\.999",
    ),
    (
        "a reward layer the teacher does not tap",
        reward_layer_not_tapped,
        r"head_layer 'up_blocks\.0\.resnets\.0' is not a teacher layer",
        r"choose from \['mid_block\.resnets\.1\.conv2'\].*add it to the teacher's layers",
    ),
    (
        "a policy learning rate for a sampler that learns nothing",
        sampler_lr_for_a_fixed_timestep,
        r"sampler_lr=0\.01 is for a learned sampler, but FixedTimestep\(t=0\) learns nothing",
        r"leave sampler_lr out, or use PolicyTimestep",
    ),
    (
        "pickle that runs code",
        pickle_that_runs_code,
        r"cannot read checkpoint .*safely",
        r"weights_only=True",
    ),
]


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory, gray_teacher_dir: Path) -> Path:
    """A finished one-step CLI distillation whose folder every case writes into (and must not change)."""
    folder = tmp_path_factory.mktemp("earlier-run")
    env = Env(gray_teacher_dir, Path(), folder, folder, None)  # type: ignore[arg-type]
    main(distill_cli(env))
    assert (folder / "last.ckpt").is_file()
    return folder


@pytest.mark.parametrize(("name", "trigger", "problem", "fix"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_problem_and_fix(
    name: str,
    trigger: Callable[[Env], str | None],
    problem: str,
    fix: str,
    gray_teacher_dir: Path,
    gray_cifar_checkpoint: Path,
    earlier_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    env = Env(gray_teacher_dir, gray_cifar_checkpoint, earlier_run, tmp_path, capsys)
    before = digest(earlier_run)
    try:
        message = trigger(env)
    except Exception as err:  # each case either returns the printed message or raises its error
        message = str(err)
    assert message, f"{name}: no error"
    assert re.search(problem, message, re.S), f"{name}: problem not named:\n{message}"
    assert re.search(fix, message, re.S), f"{name}: no fix given:\n{message}"
    assert digest(earlier_run) == before, f"{name}: an earlier run's output changed"
