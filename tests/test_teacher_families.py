"""Latent teachers (Stable Diffusion's UNet, DiT): loading by hub id offline, encoding, conditioning,
token maps, truncation, and distillation through the real CLI, on tiny random models saved in the
pipelines' own folder layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from conftest import CONF, cache_hub_repo, shapes_distill_command
from repfusion_pl import DiffusionTeacher
from repfusion_pl.cli import main
from tiny_pipelines import IMAGE_SIZE, save_dit, save_stable_diffusion

SD_LAYERS = ["down_blocks.0.resnets.0", "mid_block.resnets.1", "up_blocks.1.resnets.1"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return save_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory) -> Path:
    return save_dit(tmp_path_factory.mktemp("dit") / "tiny-dit")


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("folder", "repo_id"), [("sd_dir", "tiny/sd-1-5"), ("dit_dir", "tiny/dit-xl-2")])
def test_loads_by_hub_id_offline_equal_to_the_folder(request, offline_hf_cache, folder, repo_id):
    directory = request.getfixturevalue(folder)
    cache_hub_repo(offline_hf_cache, repo_id, lambda d: shutil.copytree(directory, d, dirs_exist_ok=True))
    by_id, by_folder = DiffusionTeacher(repo_id), DiffusionTeacher(str(directory))
    assert by_id.family.name == by_folder.family.name == ("latent_unet" if folder == "sd_dir" else "dit")
    x, t = images(), torch.tensor([0, 700])
    torch.testing.assert_close(by_id(x, t), by_folder(x, t), rtol=0, atol=0)


def test_sd_images_are_encoded_by_the_pipelines_own_vae(sd_dir):
    teacher = DiffusionTeacher(str(sd_dir), layers=SD_LAYERS)
    vae = AutoencoderKL.from_pretrained(sd_dir, subfolder="vae")
    x = images()
    with torch.no_grad():
        expected = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(teacher.unet_input(x, torch.zeros(2, dtype=torch.long)), expected)
    assert teacher.in_channels == 3 and teacher.sample_size == IMAGE_SIZE
    assert teacher.feature_shapes == {
        "down_blocks.0.resnets.0": (8, 8, 8),
        "mid_block.resnets.1": (16, 4, 4),
        "up_blocks.1.resnets.1": (8, 8, 8),
    }


def test_sd_conditions_on_the_prompt_embedded_once_by_its_text_encoder(sd_dir):
    teacher = DiffusionTeacher(str(sd_dir), layers=["mid_block.resnets.1"], prompt="a cat")
    tokenizer = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(sd_dir / "text_encoder")
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        embedding = encoder(ids.input_ids)[0]
    torch.testing.assert_close(teacher.family.modules["condition"].embedding, embedding)
    # The teacher's features are the UNet's own under that conditioning.
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    captured = {}
    unet.mid_block.resnets[1].register_forward_hook(lambda m, a, out: captured.setdefault("mid", out))
    x, t = images(), torch.tensor([10, 300])
    with torch.no_grad():
        unet(teacher.unet_input(x, t), t, encoder_hidden_states=embedding.expand(2, -1, -1))
    torch.testing.assert_close(teacher(x, t)["mid_block.resnets.1"], captured["mid"])
    empty = DiffusionTeacher(str(sd_dir), layers=["mid_block.resnets.1"])
    assert not torch.allclose(empty(x, t)["mid_block.resnets.1"], captured["mid"])


@pytest.mark.parametrize(
    ("folder", "layers"),
    [
        ("sd_dir", SD_LAYERS),
        ("sd_dir", ["mid_block.resnets.0"]),
        ("dit_dir", ["transformer_blocks.0"]),
        ("dit_dir", ["transformer_blocks.1", "transformer_blocks.3"]),
    ],
)
def test_truncated_features_equal_full_forward_exactly(request, folder, layers):
    teacher = DiffusionTeacher(str(request.getfixturevalue(folder)), layers=layers)
    x, t = images(3), torch.tensor([0, 250, 999])
    truncated, full = teacher(x, t), teacher(x, t, truncate=False)
    assert list(truncated) == layers
    for name in layers:
        assert torch.equal(truncated[name], full[name]), name


def test_truncation_skips_the_rest_of_the_denoiser(dit_dir):
    teacher = DiffusionTeacher(str(dit_dir), layers=["transformer_blocks.1"])
    calls = []
    handle = teacher.unet.transformer_blocks[2].register_forward_pre_hook(lambda *a: calls.append("late"))
    teacher(images(), torch.tensor([1, 2]))
    assert calls == []
    teacher(images(), torch.tensor([1, 2]), truncate=False)
    handle.remove()
    assert calls == ["late"]


def test_dit_tokens_become_maps_in_row_major_patch_order(dit_dir):
    teacher = DiffusionTeacher(str(dit_dir), layers=["transformer_blocks.1"])
    dit = DiTTransformer2DModel.from_pretrained(dit_dir, subfolder="transformer")
    tokens = {}
    dit.transformer_blocks[1].register_forward_hook(lambda m, a, out: tokens.setdefault("block", out))
    x, t = images(), torch.tensor([5, 50])
    null = torch.full((2,), dit.config.num_embeds_ada_norm)  # the label-dropout row: "no class"
    with torch.no_grad():
        dit(teacher.unet_input(x, t), timestep=t, class_labels=null)
    side = IMAGE_SIZE // 2 // dit.config.patch_size
    expected = tokens["block"].reshape(2, side, side, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(teacher(x, t)["transformer_blocks.1"], expected)
    assert teacher.feature_shapes == {"transformer_blocks.1": (16, side, side)}


def test_dit_conditions_on_mapped_labels_and_refuses_unmapped_ones(dit_dir):
    null = DiffusionTeacher(str(dit_dir), layers=["transformer_blocks.1"])
    mapped = DiffusionTeacher(str(dit_dir), layers=["transformer_blocks.1"], class_label_map={0: 7, 1: 2})
    x, t, labels = images(), torch.tensor([5, 50]), torch.tensor([0, 1])
    assert torch.equal(null.teacher_labels(labels, 2), torch.tensor([10, 10]))
    assert torch.equal(mapped.teacher_labels(labels, 2), torch.tensor([7, 2]))
    assert not torch.allclose(
        null(x, t, labels)["transformer_blocks.1"], mapped(x, t, labels)["transformer_blocks.1"]
    )
    with pytest.raises(ValueError, match=r"dataset labels \[2\] have no entry in class_label_map"):
        mapped(x, t, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"teacher classes \[10\], outside the teacher's 0..9"):
        DiffusionTeacher(str(dit_dir), class_label_map={0: 10})


def test_class_label_map_file_keyed_by_names_needs_the_class_order(dit_dir, tmp_path):
    (tmp_path / "map.json").write_text('{"n02": 3, "n01": 5}')
    (tmp_path / "wnids.txt").write_text("n02\nn01\n")
    teacher = DiffusionTeacher(
        str(dit_dir), class_label_map=str(tmp_path / "map.json"), class_names=str(tmp_path / "wnids.txt")
    )
    assert torch.equal(teacher.teacher_labels(torch.tensor([0, 1]), 2), torch.tensor([3, 5]))
    with pytest.raises(ValueError, match=r"keyed by class names; set `class_names`.*wnids.txt"):
        DiffusionTeacher(str(dit_dir), class_label_map=str(tmp_path / "map.json"))
    with pytest.raises(ValueError, match=r"has no entry for the classes \['n03'\]"):
        DiffusionTeacher(str(dit_dir), class_label_map=str(tmp_path / "map.json"), class_names=["n02", "n03"])


def test_layer_returning_a_tuple_names_tensor_layers_instead(sd_dir):
    with pytest.raises(
        ValueError,
        match=r"'down_blocks.0' returns tuple, not a tensor; .*the nearest: \['down_blocks.0.resnets.0'",
    ):
        DiffusionTeacher(str(sd_dir), layers=["down_blocks.0"])


def test_sd_without_text_encoder_says_what_is_missing(tmp_path):
    save_stable_diffusion(tmp_path / "sd", text=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"text-conditioned \(cross_attention_dim=16\) but has no tokenizer/ or text_encoder/",
    ):
        DiffusionTeacher(str(tmp_path / "sd"))


def test_unknown_layout_lists_what_was_found_and_what_each_family_needs(sd_dir, tmp_path):
    shutil.copytree(sd_dir / "vae", tmp_path / "odd" / "vae")
    (tmp_path / "odd" / "notes.txt").write_text("")
    with pytest.raises(
        FileNotFoundError, match=r"found notes.txt, vae/ \(AutoencoderKL\); expected one of"
    ) as err:
        DiffusionTeacher(str(tmp_path / "odd"))
    assert "latent_unet" in str(err.value) and "dit" in str(err.value) and "convert-adm" in str(err.value)
    shutil.copytree(sd_dir / "unet", tmp_path / "unet-only" / "unet")
    with pytest.raises(FileNotFoundError, match=r"latent UNet2DConditionModel but .* has no vae/ folder"):
        DiffusionTeacher(str(tmp_path / "unet-only"))


def test_prompt_refused_for_models_without_text(dit_dir, gray_teacher_dir):
    with pytest.raises(ValueError, match=r"not text-conditioned; remove `prompt`"):
        DiffusionTeacher(str(dit_dir), prompt="a cat")
    with pytest.raises(ValueError, match=r"without text conditioning; remove `prompt`"):
        DiffusionTeacher(str(gray_teacher_dir), prompt="a cat")


def test_image_size_must_suit_the_vae_and_patches(dit_dir):
    assert DiffusionTeacher(str(dit_dir), image_size=32).feature_shapes["transformer_blocks.2"] == (16, 8, 8)
    with pytest.raises(ValueError, match=r"multiple of 4; set image_size .* to e.g. 20"):
        DiffusionTeacher(str(dit_dir), image_size=22)


@pytest.mark.parametrize(
    ("folder", "conf"), [("sd_dir", "teacher_sd_tiny.yaml"), ("dit_dir", "teacher_dit_tiny.yaml")]
)
def test_distils_through_the_cli_with_only_the_teacher_changed_and_resumes(request, tmp_path, folder, conf):
    teacher = request.getfixturevalue(folder)

    def fit(*extra: str) -> None:
        main(shapes_distill_command(teacher, tmp_path, "--config", str(CONF / conf), *extra))

    fit()
    checkpoint = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    # No teacher tensor (denoiser, VAE, text embedding) is ever saved: the teacher reloads from source.
    assert {key.split(".")[0] for key in checkpoint["state_dict"]} == {"student", "projectors", "sampler"}
    assert not any(
        k.startswith("teacher") or "vae" in k or "condition" in k for k in checkpoint["state_dict"]
    )
    assert checkpoint["repfusion"]["teacher"]["family"] == ("latent_unet" if folder == "sd_dir" else "dit")
    fit(f"--ckpt_path={tmp_path / 'ckpts' / 'last.ckpt'}", "--trainer.max_steps=3")
    assert torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_probe_searches_each_family_from_encoder_to_decoder(sd_dir, dit_dir):
    from repfusion_pl.probing import candidate_layers, run_probe

    assert candidate_layers(DiffusionTeacher(str(sd_dir))) == [
        "down_blocks.0.resnets.0",
        "down_blocks.1.resnets.0",
        "mid_block.resnets.0",
        "mid_block.resnets.1.conv2",
        "up_blocks.0.resnets.1",
        "up_blocks.1.resnets.1",
    ]
    blocks = [f"transformer_blocks.{i}" for i in range(4)]
    assert candidate_layers(DiffusionTeacher(str(dit_dir))) == blocks
    x, labels = images(16, seed=1), torch.arange(16) % 2
    loaders = {split: [(x, labels)] for split in ("train", "val", "test")}
    result = run_probe({"source": str(dit_dir), "compile": True}, loaders, 2, [0], progress=False)
    # One teacher load serves the whole grid; the halves of a transformer are probed apart and together.
    assert [row["layer"] for row in result["rows"]] == [
        *blocks,
        "transformer_blocks.0+transformer_blocks.1",
        "transformer_blocks.2+transformer_blocks.3",
        "+".join(blocks),
    ]
    assert result["teacher_options"] == {"source": str(dit_dir)}  # no compile: it would swallow the taps
    # The probe sees images without labels: a label-conditioned teacher would leak them into its features.
    with pytest.raises(
        ValueError, match=r"remove class_label_map \(a teacher conditioned on each image's true"
    ):
        run_probe({"source": str(dit_dir), "class_label_map": {0: 3}}, loaders, 2, [0], progress=False)


def test_probe_refuses_class_conditional_teachers_without_a_null_class(tmp_path):
    from conftest import make_tiny_unet, save_pipeline
    from repfusion_pl.probing import run_probe

    save_pipeline(tmp_path, make_tiny_unet(3, sample_size=16, num_class_embeds=4))
    loaders = {split: [(images(4), torch.arange(4) % 2)] for split in ("train", "val", "test")}
    with pytest.raises(ValueError, match=r"class-conditional without a null class.*probe an unconditional"):
        run_probe(str(tmp_path), loaders, 2, [0], progress=False)


def test_a_wrong_layer_lists_the_denoisers_own_near_names(dit_dir):
    with pytest.raises(ValueError, match=r"no layer 'transformer_block.1'.*'transformer_blocks.1'"):
        DiffusionTeacher(str(dit_dir), layers=["transformer_block.1"])


def test_latent_batches_must_have_the_teachers_image_size(dit_dir):
    teacher = DiffusionTeacher(str(dit_dir))
    with pytest.raises(
        ValueError, match=r"set up for 16 px images .* batch is 32x32; set the teacher's image_size"
    ):
        teacher(torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_moves_reach_the_vae_and_the_prompt_embedding(sd_dir):
    teacher = DiffusionTeacher(str(sd_dir), layers=["mid_block.resnets.1"]).to(torch.float64)
    assert teacher.family.modules["condition"].get_buffer("embedding").dtype == torch.float64
    assert {p.dtype for p in teacher.family.modules.parameters()} == {torch.float64}
    assert teacher(images().double(), torch.tensor([0, 1]))["mid_block.resnets.1"].dtype == torch.float64
    # Only the VAE's encoder is kept; the text encoder was freed after embedding the prompt.
    assert not any("decoder" in name for name, _ in teacher.family.modules.named_parameters())
    assert set(teacher.family.modules) == {"denoiser", "vae", "condition"}


def test_sd_variants_with_other_conditioning_or_inputs_are_refused(tmp_path):
    save_stable_diffusion(tmp_path / "inpaint", unet_in_channels=9)
    with pytest.raises(
        ValueError, match=r"extra input channels \(9 for 4-channel latents: inpainting, depth\)"
    ):
        DiffusionTeacher(str(tmp_path / "inpaint"))


def test_weights_that_do_not_fit_the_config_are_refused_not_left_random(dit_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(dit_dir, tmp_path / "dit")
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["pos_embed.proj.weight"]
    save_file(state, weights)
    with pytest.raises(
        ValueError, match=r"transformer do not fit its config.json \(missing_keys \['pos_embed.proj"
    ):
        DiffusionTeacher(str(broken))


def test_transformers_other_than_dit_are_refused_by_layout(dit_dir, tmp_path):
    import json

    pixart = shutil.copytree(dit_dir, tmp_path / "pixart")
    config = json.loads((pixart / "transformer" / "config.json").read_text())
    (pixart / "transformer" / "config.json").write_text(
        json.dumps({**config, "norm_type": "ada_norm_single"})
    )
    with pytest.raises(ValueError, match=r"not a class-conditional DiT \(norm_type ada_norm_zero"):
        DiffusionTeacher(str(pixart))


def test_negative_dataset_labels_in_a_map_are_refused(dit_dir):
    with pytest.raises(ValueError, match=r"class_label_map has negative dataset labels \[-1\]"):
        DiffusionTeacher(str(dit_dir), class_label_map={-1: 2, 0: 1})
