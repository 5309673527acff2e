"""`repfusion convert-adm`: guided-diffusion (ADM) checkpoints -> diffusers folders, checked against an
independent reference forward (`adm_reference`) on tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

import repfusion_pl.teachers.adm.convert as adm_convert
from adm_reference import ReferenceUNet, random_reference
from repfusion_pl.cli import SUBCOMMANDS, main
from repfusion_pl.teachers.adm import (
    ADM_PRESETS,
    AdmConfig,
    AdmConversionError,
    convert_adm,
    convert_adm_state_dict,
    diffusers_unet_for,
    expected_adm_shapes,
)

#: 16 px, widths (32, 64, 64), attention at rate 2 (level 1) and in the middle, 4 heads of 16 channels.
TINY = AdmConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(2,),
    channel_mult=(1, 2, 2),
    num_head_channels=16,
    num_classes=5,
    use_scale_shift_norm=True,
    resblock_updown=True,
    attention_order="new",
    learn_sigma=True,
    noise_schedule="cosine",
)
TIMESTEPS = torch.tensor([0, 10, 500, 999])
LABELS = torch.tensor([0, 3, 4, 1])

CASES = {
    "new-updown": TINY,
    "legacy-updown": dataclasses.replace(TINY, attention_order="legacy"),
    "new-conv-resample": dataclasses.replace(TINY, resblock_updown=False),
    "legacy-conv-resample": dataclasses.replace(TINY, resblock_updown=False, attention_order="legacy"),
    # unconditional, additive time embedding, fixed num_heads, linear schedule
    "uncond-num-heads": dataclasses.replace(
        TINY,
        num_classes=None,
        num_head_channels=-1,
        num_heads=2,
        use_scale_shift_norm=False,
        learn_sigma=False,
        noise_schedule="linear",
        attention_order="legacy",
    ),
}


def save_checkpoint(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


def config_json(path: Path, config: AdmConfig) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return path


def convert(tmp_path: Path, config: AdmConfig, seed: int = 0) -> tuple[ReferenceUNet, Path]:
    """Convert a random reference model through the real CLI; return it and the output folder."""
    reference = random_reference(config, seed=seed)
    ckpt = save_checkpoint(tmp_path / "adm.pt", reference.state_dict())
    out = tmp_path / "converted"
    main(["convert-adm", str(ckpt), str(out), "--config_json", str(config_json(tmp_path / "c.json", config))])
    return reference, out


def refused(capsys, *args: str) -> str:
    """Run the CLI expecting a refusal (exit status 2); return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-adm", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("repfusion: ")
    return err


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: the two sum in different orders (SDPA vs einsum, Linear vs Conv1d),
    and std-0.2 weights make activations large (up to ~200 in the middle block), so atol scales with them."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


def assert_nothing_written(folder: Path, before: set[str]) -> None:
    assert {path.name for path in folder.iterdir()} == before, "a failed conversion left files behind"


@pytest.mark.parametrize("case", CASES)
def test_converted_unet_reproduces_the_reference_forward(case, tmp_path):
    config = CASES[case]
    reference, out = convert(tmp_path, config)
    unet = UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False).eval()
    mids: dict[str, torch.Tensor] = {}
    reference.middle_block.register_forward_hook(lambda m, i, o: mids.__setitem__("adm", o))
    unet.mid_block.register_forward_hook(lambda m, i, o: mids.__setitem__("diffusers", o))
    torch.manual_seed(1)
    x = torch.randn(4, 3, 16, 16)
    labels = LABELS if config.num_classes else None
    with torch.no_grad():
        expected = reference(x, TIMESTEPS, labels)
        actual = unet(x, TIMESTEPS, class_labels=labels).sample
    assert expected.shape == (4, 6 if config.learn_sigma else 3, 16, 16)
    assert expected.abs().mean() > 0.1  # not trivially zero
    assert_matches(mids["diffusers"], mids["adm"])
    assert_matches(actual, expected)


def test_the_conversion_depends_on_the_attention_order(tmp_path):
    """The orders share shapes, so only the forward tells them apart: the wrong one must differ."""
    reference = random_reference(CASES["legacy-updown"])
    wrong, _ = convert_adm_state_dict(reference.state_dict(), TINY)  # the "new" order
    unet = diffusers_unet_for(TINY).eval()
    unet.load_state_dict(wrong, strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(
            unet(x, TIMESTEPS[:2], LABELS[:2]).sample, reference(x, TIMESTEPS[:2], LABELS[:2])
        )


def test_folder_loads_as_a_teacher_with_the_adm_schedule_and_a_full_report(tmp_path, capsys):
    reference, out = convert(tmp_path, TINY)
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "parameters" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    from repfusion_pl import DiffusionTeacher

    layer = "mid_block.resnets.1.conv2"
    teacher = DiffusionTeacher(str(out), class_label_map={0: 3, 1: 1}, layers=[layer])
    features = teacher(torch.rand(2, 3, 16, 16), torch.tensor([0, 50]), torch.tensor([0, 1]))
    assert features[layer].shape == (2, 64, 4, 4) and torch.isfinite(features[layer]).all()

    # guided-diffusion's cosine betas: 1 - abar(t+1)/abar(t), capped at 0.999
    scheduler = DDPMScheduler.from_pretrained(out / "scheduler")
    abar = [math.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(1001)]
    betas = torch.tensor([min(1 - abar[i + 1] / abar[i], 0.999) for i in range(1000)])
    torch.testing.assert_close(scheduler.betas, betas.float())
    assert scheduler.config.variance_type == "learned_range"

    lines = [
        line for line in (out / "conversion_report.txt").read_text().splitlines() if not line.startswith("#")
    ]
    state = reference.state_dict()
    assert [line.split(" ")[0] for line in lines] == list(state)  # every ADM key, once, in order
    by_key = {line.split(" ")[0]: line for line in lines}
    assert by_key["time_embed.0.weight"] == "time_embed.0.weight 128x32 -> time_embedding.linear_1.weight"
    assert by_key["middle_block.1.qkv.weight"].endswith(
        "-> mid_block.attentions.0.to_q.weight, mid_block.attentions.0.to_k.weight, "
        "mid_block.attentions.0.to_v.weight"
    )
    produced = [key for line in lines for key in line.split(" -> ")[1].split(", ")]
    assert sorted(produced) == sorted(
        UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False).state_dict()
    )


def test_linear_schedule_follows_guided_diffusion(tmp_path):
    (tmp_path / "converted").mkdir()  # an empty output folder is fine
    _, out = convert(tmp_path, dataclasses.replace(CASES["uncond-num-heads"], diffusion_steps=500))
    scheduler = DDPMScheduler.from_pretrained(out / "scheduler")
    torch.testing.assert_close(scheduler.betas, torch.linspace(0.0002, 0.04, 500))  # 1000/T-scaled range
    assert scheduler.config.variance_type == "fixed_large"


def test_wrong_preset_is_refused_with_the_shapes(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "adm.pt", random_reference(TINY).state_dict())
    err = refused(capsys, str(ckpt), str(tmp_path / "out"), "--config", "imagenet64-cond")
    assert "not the model of imagenet64-cond" in err
    assert "time_embed.0.weight (128, 32) (expected (768, 192))" in err
    assert "No preset fits" in err
    assert_nothing_written(tmp_path, {"adm.pt"})


def test_a_fitting_preset_is_suggested():
    for given, meant in [("imagenet256-cond", "imagenet256-uncond"), ("imagenet128-cond", "imagenet64-cond")]:
        meta = {k: torch.empty(s, device="meta") for k, s in expected_adm_shapes(ADM_PRESETS[meant]).items()}
        with pytest.raises(AdmConversionError, match=f"fits --config {meant}"):
            convert_adm_state_dict(meta, given)


@pytest.mark.parametrize("preset", ["imagenet64-cond", "imagenet256-cond", "imagenet256-uncond"])
def test_presets_map_onto_their_diffusers_unet(preset):
    """Every released architecture's keys and shapes land on the diffusers model's, one for one."""
    with torch.device("meta"):
        unet = diffusers_unet_for(ADM_PRESETS[preset])
    shapes = expected_adm_shapes(ADM_PRESETS[preset])
    converted, rows = convert_adm_state_dict(
        {k: torch.empty(s, device="meta") for k, s in shapes.items()}, preset
    )
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in unet.state_dict().items()}
    assert [row[0] for row in rows] == list(shapes)


def test_unrepresentable_preset_is_refused_before_reading(tmp_path, capsys):
    err = refused(capsys, str(tmp_path / "absent.pt"), str(tmp_path / "out"), "--config", "imagenet128-cond")
    assert "cannot reproduce this model: it needs one attention head width, not [128, 192, 256]" in err
    assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("damage", ["missing", "extra"])
def test_missing_and_extra_keys_are_listed(damage, tmp_path, capsys):
    state = random_reference(TINY).state_dict()
    if damage == "missing":
        del state["middle_block.1.qkv.bias"]
    else:
        state["middle_block.3.weight"] = torch.zeros(3)
    ckpt = save_checkpoint(tmp_path / "adm.pt", state)
    cfg = config_json(tmp_path / "c.json", TINY)
    err = refused(capsys, str(ckpt), str(tmp_path / "out"), "--config_json", str(cfg))
    if damage == "missing":
        assert "lacks 1 key(s) of the AdmConfig: middle_block.1.qkv.bias" in err
    else:
        assert "has 1 key(s) that the AdmConfig lacks: middle_block.3.weight" in err
    assert_nothing_written(tmp_path, {"adm.pt", "c.json"})


@pytest.mark.parametrize("content", ["diffusers", "tensor", "wrapped"])
def test_not_a_guided_diffusion_state_dict(content, tmp_path, capsys):
    if content == "diffusers":
        state: object = diffusers_unet_for(TINY).state_dict()
    elif content == "tensor":
        state = torch.zeros(3)
    else:
        state = {"model": random_reference(TINY).state_dict(), "step": torch.tensor(3)}
    ckpt = save_checkpoint(tmp_path / "thing.pt", state)
    cfg = config_json(tmp_path / "c.json", TINY)
    err = refused(capsys, str(ckpt), str(tmp_path / "out"), "--config_json", str(cfg))
    assert "guided-diffusion's are plain state dicts (time_embed.0.weight, input_blocks.0.0.weight" in err
    expected = {
        "diffusers": "already converted",
        "tensor": "is a Tensor, not a dict",
        "wrapped": "dicts under ['model']",
    }
    assert expected[content] in err
    assert_nothing_written(tmp_path, {"thing.pt", "c.json"})


def test_existing_output_folder_is_refused(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "adm.pt", random_reference(TINY).state_dict())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = refused(capsys, str(ckpt), str(out), "--config_json", str(config_json(tmp_path / "c.json", TINY)))
    assert "already exists and is not an empty folder" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert_nothing_written(tmp_path, {"adm.pt", "c.json", "out"})


def test_bad_config_json_is_refused(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "adm.pt", random_reference(TINY).state_dict())
    fields = {**dataclasses.asdict(TINY), "attention_order": "New", "attention_resolutions": [8]}
    (tmp_path / "c.json").write_text(json.dumps(fields))
    err = refused(capsys, str(ckpt), str(tmp_path / "out"), "--config_json", str(tmp_path / "c.json"))
    assert (
        "attention_order 'New' is not 'new' or 'legacy'" in err
        and "attention rates (8,) are not all level rates [1, 2, 4]" in err
    )
    assert_nothing_written(tmp_path, {"adm.pt", "c.json"})


def test_subcommand_is_registered_with_help(capsys):
    assert "convert-adm" in SUBCOMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-adm", "--help"])
    assert exit_info.value.code == 0
    assert "imagenet64-cond" in capsys.readouterr().out


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    class FullDisk(adm_convert.DDPMPipeline):
        def save_pretrained(self, directory, **kwargs):
            (Path(directory) / "unet").mkdir()
            raise OSError("No space left on device")

    monkeypatch.setattr(adm_convert, "DDPMPipeline", FullDisk)
    ckpt = save_checkpoint(tmp_path / "adm.pt", random_reference(TINY).state_dict())
    with pytest.raises(OSError, match="No space left"):
        convert_adm(ckpt, tmp_path / "out", TINY)
    assert_nothing_written(tmp_path, {"adm.pt"})
