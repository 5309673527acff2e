from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import cache_hub_repo, make_tiny_unet, save_pipeline
from repfusion_pl.teachers import DEFAULT_TEACHER_LAYER, DiffusionTeacher


def full_forward_features(teacher: DiffusionTeacher, images, t, labels=None):
    return teacher(images, t, labels, truncate=False)


def test_loads_pipeline_layout_and_reads_schedule(tmp_path):
    save_pipeline(tmp_path, make_tiny_unet(1), num_train_timesteps=123)
    teacher = DiffusionTeacher(str(tmp_path))
    assert teacher.num_train_timesteps == 123
    assert teacher.in_channels == 1 and teacher.sample_size == 8
    assert teacher.feature_shapes == {DEFAULT_TEACHER_LAYER: (16, 4, 4)}


def test_loads_unet_saved_alone_with_default_schedule(tmp_path):
    make_tiny_unet(1).save_pretrained(tmp_path)
    teacher = DiffusionTeacher(str(tmp_path))
    assert teacher.num_train_timesteps == 1000


def test_loads_hub_id_offline_from_local_cache(offline_hf_cache, rgb_teacher_dir):
    import shutil

    snapshot = cache_hub_repo(
        offline_hf_cache,
        "google/ddpm-cifar10-32",
        lambda d: shutil.copytree(rgb_teacher_dir, d, dirs_exist_ok=True),
    )
    teacher = DiffusionTeacher("google/ddpm-cifar10-32")
    expected = DiffusionTeacher(str(snapshot))
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([0, 500])
    torch.testing.assert_close(teacher(x, t), expected(x, t), rtol=0, atol=0)


def test_uncached_hub_id_fails_with_the_fix(offline_hf_cache):
    with pytest.raises(FileNotFoundError, match=r"hf download google/ddpm-ema-celebahq-256"):
        DiffusionTeacher("google/ddpm-ema-celebahq-256")


def test_missing_local_path_shows_expected_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*expected one of these layouts"):
        DiffusionTeacher(str(tmp_path / "no" / "such" / "teacher"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no diffusion model found in .*empty: found an empty folder"
    ):
        DiffusionTeacher(str(tmp_path / "empty"))


def test_unknown_layer_lists_nearest_names(gray_teacher_dir):
    with pytest.raises(ValueError, match=r"no layer 'mid_block.resnet.1.conv2'.*'mid_block.resnets.1.conv2'"):
        DiffusionTeacher(str(gray_teacher_dir), layers=["mid_block.resnet.1.conv2"])


@pytest.mark.parametrize(
    "layers",
    [
        [DEFAULT_TEACHER_LAYER],
        ["down_blocks.0.resnets.0.conv2", DEFAULT_TEACHER_LAYER],
        ["down_blocks.1.attentions.0", "mid_block"],
        ["up_blocks.0.resnets.1"],  # the decoder: truncation stops after it
        ["mid_block.resnets.0", "up_blocks.1.resnets.0.conv2"],
    ],
)
def test_truncated_features_equal_full_forward_exactly(gray_teacher_dir, layers):
    teacher = DiffusionTeacher(str(gray_teacher_dir), layers=layers)
    x, t = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 250, 999])
    truncated, full = teacher(x, t), full_forward_features(teacher, x, t)
    assert list(truncated) == layers
    for name in layers:
        assert torch.equal(truncated[name], full[name])


def test_truncated_forward_never_runs_the_decoder(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    calls = []
    hook = teacher.unet.up_blocks.register_forward_pre_hook(lambda *a: calls.append("up"))
    for block in teacher.unet.up_blocks:
        block.register_forward_pre_hook(lambda *a: calls.append("up"))
    teacher.unet.conv_out.register_forward_pre_hook(lambda *a: calls.append("out"))
    teacher(torch.rand(2, 1, 8, 8), torch.tensor([3, 4]))
    assert calls == []
    full_forward_features(teacher, torch.rand(2, 1, 8, 8), torch.tensor([3, 4]))
    assert "out" in calls and "up" in calls
    hook.remove()


def test_teacher_is_a_guest_no_params_no_state_no_grad(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    assert list(teacher.parameters()) == []
    assert list(teacher.state_dict()) == []
    assert all(not p.requires_grad for p in teacher.unet.parameters())
    teacher.train()
    assert not teacher.unet.training
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    feats = teacher(x, torch.tensor([1, 2]))
    assert not feats[DEFAULT_TEACHER_LAYER].requires_grad


def test_moves_reach_the_guest_and_copies_share_it(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    teacher.to(torch.float64)
    assert next(teacher.unet.parameters()).dtype == torch.float64
    clone = copy.deepcopy(teacher)
    assert clone.unet is teacher.unet
    feats = clone(torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.tensor([5]))
    assert feats[DEFAULT_TEACHER_LAYER].dtype == torch.float64


def test_input_range_is_mapped_onto_minus_one_one(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir), input_range=(0.0, 255.0))
    images = torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(teacher.to_unet_range(images), torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
    # Same features for the same picture given in two ranges.
    x = torch.rand(2, 1, 8, 8)
    t = torch.tensor([7, 70])
    unit = DiffusionTeacher(str(gray_teacher_dir), input_range=(0.0, 1.0))
    torch.testing.assert_close(teacher(x * 255, t), unit(x, t))


def test_unet_that_centres_its_own_input_gets_zero_one(tmp_path):
    save_pipeline(tmp_path, make_tiny_unet(1, center_input_sample=True))
    teacher = DiffusionTeacher(str(tmp_path))
    images = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(teacher.to_unet_range(images), images)


def test_noised_mode_uses_scheduler_add_noise(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir), mode="noised")
    x, t = torch.rand(3, 1, 8, 8), torch.tensor([0, 400, 999])
    torch.manual_seed(11)
    noised = teacher.unet_input(x, t)
    torch.manual_seed(11)
    expected = DDPMScheduler(num_train_timesteps=1000).add_noise(x * 2 - 1, torch.randn(3, 1, 8, 8), t)
    torch.testing.assert_close(noised, expected)
    clean = DiffusionTeacher(str(gray_teacher_dir))
    torch.testing.assert_close(clean.unet_input(x, t), x * 2 - 1)


def test_class_conditional_teacher_requires_a_label_map(tmp_path):
    save_pipeline(tmp_path, make_tiny_unet(1, num_class_embeds=5))
    with pytest.raises(ValueError, match=r"class-conditional.*class_label_map"):
        DiffusionTeacher(str(tmp_path))
    teacher = DiffusionTeacher(str(tmp_path), class_label_map={0: 4, 1: 2})
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([1, 1])
    feats = teacher(x, t, torch.tensor([0, 1]))[DEFAULT_TEACHER_LAYER]
    direct = teacher._guest.taps.run(teacher.unet, x * 2 - 1, t, class_labels=torch.tensor([4, 2]))
    torch.testing.assert_close(feats, direct[DEFAULT_TEACHER_LAYER])
    with pytest.raises(ValueError, match=r"no entry in class_label_map"):
        teacher(x, t, torch.tensor([0, 3]))


def test_unconditional_teacher_refuses_a_label_map(gray_teacher_dir):
    with pytest.raises(ValueError, match="not class-conditional; remove `class_label_map`"):
        DiffusionTeacher(str(gray_teacher_dir), class_label_map={0: 1})


def test_wrong_image_channels_name_the_fix(gray_teacher_dir):
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    with pytest.raises(ValueError, match=r"1-channel images but the batch has 3"):
        teacher(torch.rand(1, 3, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_folder_of_half_precision_weights_loads_as_float32_and_gives_float32_features(tmp_path, dtype):
    from conftest import make_tiny_unet, save_pipeline

    unet = make_tiny_unet(1)
    folder = save_pipeline(tmp_path / "half", make_tiny_unet(1).to(dtype))
    stored = json.loads((folder / "unet" / "config.json").read_text())
    assert stored["sample_size"] == 8
    teacher = DiffusionTeacher(str(folder))
    assert {p.dtype for p in teacher.denoiser.parameters()} == {torch.float32}
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([0, 500])
    features = teacher(x, t)[teacher.layers[0]]
    assert features.dtype == torch.float32
    # The same weights, rounded to half precision once: the features of the float32 original, nearly.
    reference = DiffusionTeacher(str(save_pipeline(tmp_path / "full", unet.to(dtype).float())))
    torch.testing.assert_close(features, reference(x, t)[reference.layers[0]])
