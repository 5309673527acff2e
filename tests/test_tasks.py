from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from repfusion_pl import BackboneSpec, ClassificationTask, LandmarkTask, SegmentationTask
from repfusion_pl.students.weights import read_backbone_weights
from repfusion_pl.tasks.landmarks import decode_heatmaps, gaussian_heatmaps


def loader(images, targets, batch_size=4):
    return DataLoader(TensorDataset(images, targets), batch_size=batch_size)


def test_classification_loads_distilled_weights_exactly(gray_cifar_checkpoint):
    # No backbone given: its spec (resnet18, CIFAR stem, 1 channel) comes from the checkpoint.
    task = ClassificationTask(10, backbone_weights=str(gray_cifar_checkpoint))
    assert task.backbone_spec == BackboneSpec("resnet18", "torchvision", "cifar", 1)
    distilled = read_backbone_weights(gray_cifar_checkpoint).state_dict
    for key, value in task.encoder.backbone.state_dict().items():
        assert torch.equal(value, distilled[key]), key
    assert task(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    assert set(task.train_metrics.keys()) == {"train/acc", "train/acc_top5"}


def test_classification_into_a_mismatched_architecture_lists_the_keys(gray_cifar_checkpoint):
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): layer1\.2"):
        ClassificationTask(
            10, backbone=BackboneSpec("resnet34", in_channels=1), backbone_weights=str(gray_cifar_checkpoint)
        )


def test_linear_probe_keeps_backbone_and_batchnorm_statistics_fixed(gray_cifar_checkpoint, tmp_path):
    task = ClassificationTask(3, backbone_weights=str(gray_cifar_checkpoint), freeze_backbone=True)
    before = {k: v.clone() for k, v in task.encoder.backbone.state_dict().items()}
    head_before = task.head.weight.clone()
    data = loader(torch.rand(8, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    quiet_trainer(tmp_path, max_steps=3).fit(task, data)
    for key, value in task.encoder.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(task.head.weight, head_before)
    optimiser = task.configure_optimizers()
    assert sum(p.numel() for g in optimiser.param_groups for p in g["params"]) == 512 * 3 + 3


def test_full_fine_tune_changes_the_backbone(gray_cifar_checkpoint, tmp_path):
    task = ClassificationTask(3, backbone_weights=str(gray_cifar_checkpoint))
    before = task.encoder.backbone.layer4[1].conv2.weight.clone()
    quiet_trainer(tmp_path, max_steps=2).fit(
        task, loader(torch.rand(8, 1, 16, 16), torch.tensor([0, 1, 2, 0] * 2))
    )
    assert not torch.equal(before, task.encoder.backbone.layer4[1].conv2.weight)


def test_classification_labels_outside_num_classes_are_explained():
    task = ClassificationTask(3, backbone=BackboneSpec(in_channels=1))
    with pytest.raises(ValueError, match=r"label 5 is outside 0\.\.2"):
        task.training_step((torch.rand(2, 1, 16, 16), torch.tensor([0, 5])), 0)


def test_segmentation_encoder_takes_the_distilled_backbone(rgb_imagenet_checkpoint, tmp_path):
    task = SegmentationTask(
        4, backbone_weights=str(rgb_imagenet_checkpoint), class_names=["bg", "a", "b", "c"]
    )
    distilled = read_backbone_weights(rgb_imagenet_checkpoint).state_dict
    torch.testing.assert_close(
        task.model.encoder.state_dict()["layer2.0.conv1.weight"], distilled["layer2.0.conv1.weight"]
    )
    masks = torch.randint(0, 4, (8, 32, 32))
    masks[:, :2] = 255  # ignored pixels
    data = loader(torch.rand(8, 3, 32, 32), masks)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(task, data, data)
    logged = trainer.callback_metrics
    assert {"val/miou", "val/f1", "val/f1_bg", "val/f1_c", "val/loss"} <= set(logged)


def test_segmentation_accepts_a_cifar_stem_student(gray_cifar_checkpoint):
    task = SegmentationTask(
        3,
        backbone=BackboneSpec(stem="cifar", in_channels=1),
        dice_weight=0.5,
        backbone_weights=str(gray_cifar_checkpoint),
    )
    images = torch.rand(2, 1, 32, 32)
    output = task(images)
    assert output.shape == (2, 3, 32, 32)
    assert torch.isfinite(task.compute_loss(output, torch.randint(0, 3, (2, 32, 32))))


def test_heatmap_encoding_and_sub_pixel_decoding_round_trip():
    torch.manual_seed(0)
    keypoints = torch.rand(4, 5, 2) * 28 + 2
    heatmaps = gaussian_heatmaps(keypoints, (8, 8), stride=4, sigma=1.5)
    assert heatmaps.shape == (4, 5, 8, 8) and heatmaps.max() <= 1
    decoded = decode_heatmaps(heatmaps, stride=4)
    torch.testing.assert_close(decoded, keypoints, atol=1e-3, rtol=0)  # exact for Gaussians
    integer = decode_heatmaps(gaussian_heatmaps(torch.tensor([[[10.0, 6.0]]]), (16, 16), 1, 1.0), 1)
    torch.testing.assert_close(integer, torch.tensor([[[10.0, 6.0]]]))


def test_landmark_head_reaches_the_requested_heatmap_stride():
    task = LandmarkTask(5, (0, 1), image_size=32, heatmap_stride=1, backbone=BackboneSpec(stem="cifar"))
    assert task(torch.rand(2, 3, 32, 32)).shape == (2, 5, 32, 32)
    with pytest.raises(ValueError, match="power of two"):
        LandmarkTask(5, (0, 1), image_size=32, heatmap_stride=3)


def test_flip_test_averages_mirrored_heatmaps_with_swapped_keypoints():
    task = LandmarkTask(
        3, (0, 2), flip_index=[2, 1, 0], flip_test=True, image_size=16, heatmap_stride=2
    ).eval()
    images = torch.rand(1, 3, 16, 16)
    plain = task.heatmaps(images)
    mirrored = task.heatmaps(images.flip(-1)).flip(-1)[:, [2, 1, 0]]
    torch.testing.assert_close(task(images), (plain + mirrored) / 2)
    with pytest.raises(ValueError, match="permutation"):
        LandmarkTask(3, (0, 2), flip_index=[0, 0, 1])
    with pytest.raises(ValueError, match="flip_test needs flip_index"):
        LandmarkTask(3, (0, 2), flip_test=True)


def test_landmark_training_lowers_the_heatmap_loss_and_reports_nme(tmp_path):
    torch.manual_seed(0)
    images = torch.zeros(8, 3, 16, 16)
    keypoints = torch.tensor([[4.0, 4.0], [11.0, 4.0], [8.0, 11.0]]).expand(8, 3, 2).clone()
    for x, y in keypoints[0].long().tolist():
        images[:, :, y, x] = 1.0
    task = LandmarkTask(
        3, (0, 1), image_size=16, heatmap_stride=2, optimizer=lambda p: torch.optim.Adam(p, 1e-2)
    )
    first = task.compute_loss(task(images), keypoints).item()
    trainer = quiet_trainer(tmp_path, max_steps=25, limit_val_batches=1)
    trainer.fit(task, loader(images, keypoints, 8), loader(images, keypoints, 8))
    task.train()
    # Over seeds 0-20 (AVX-512 and AVX2 alike) the loss fell to at most 0.064 of its first value.
    assert task.compute_loss(task(images), keypoints).item() < first
    assert "val/nme" in trainer.callback_metrics


def test_backbone_defaults_per_task_when_nothing_says_which():
    assert ClassificationTask(3).backbone_spec == BackboneSpec()  # CIFAR stem, 3 channels
    assert SegmentationTask(3).backbone_spec.stem == "imagenet"  # smp decoders expect strides 2..32


def test_a_task_refuses_batches_without_labels():
    task = ClassificationTask(3, backbone=BackboneSpec(in_channels=1))
    with pytest.raises(TypeError, match="images alone; set its labels: true"):
        task.training_step(torch.rand(2, 1, 16, 16), 0)


def test_bisenetv1_on_a_distilled_resnet18_trains_with_its_auxiliary_heads(rgb_imagenet_checkpoint):
    task = SegmentationTask(4, decoder="bisenetv1", backbone_weights=str(rgb_imagenet_checkpoint))
    distilled = read_backbone_weights(rgb_imagenet_checkpoint).state_dict
    assert torch.equal(
        task.backbone_module().state_dict()["layer3.0.conv1.weight"], distilled["layer3.0.conv1.weight"]
    )
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    main, aux16, aux32 = task.train()(images)  # training: the main and both auxiliary logits
    assert main.shape == aux16.shape == aux32.shape == (2, 4, 64, 64)
    only_main = torch.nn.functional.cross_entropy(main, masks)
    assert task.compute_loss((main, aux16, aux32), masks) > only_main
    assert task.eval()(images).shape == (2, 4, 64, 64)  # evaluation: the main head alone
    wide = SegmentationTask(
        4,
        decoder="bisenetv1",
        backbone=BackboneSpec("resnet50", stem="imagenet"),
        decoder_args={
            "context_channels": 512,
            "spatial_channels": [256, 256, 256, 512],
            "out_channels": 1024,
            "aux_channels": 256,
        },
    )
    assert wide.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_landmark_heads_of_the_paper_resnet50_deconv_and_hrnet_concat():
    resnet50 = LandmarkTask(
        5,
        (0, 1),
        image_size=64,
        heatmap_stride=4,
        head_channels=256,
        backbone=BackboneSpec("resnet50", stem="imagenet"),
    )
    assert resnet50(torch.rand(2, 3, 64, 64)).shape == (2, 5, 16, 16)
    assert resnet50.head[0].out_channels == 256  # three 256-wide deconvolutions, as the authors' head
    hrnet = LandmarkTask(
        5,
        (0, 1),
        image_size=64,
        heatmap_stride=4,
        head="concat",
        backbone=BackboneSpec("hrnet_w18", "timm", "imagenet"),
    )
    assert hrnet(torch.rand(2, 3, 64, 64)).shape == (2, 5, 16, 16)
    assert hrnet.head.out.in_channels == 18 + 36 + 72 + 144
    with pytest.raises(ValueError, match="use head: concat"):
        LandmarkTask(
            5, (0, 1), image_size=64, heatmap_stride=4, backbone=BackboneSpec("hrnet_w18", "timm", "imagenet")
        )


def test_an_hrnet_student_distils_from_its_fused_map_and_refuses_a_branch_list():
    from repfusion_pl import Student

    student = Student("hrnet_w18", library="timm", stem="imagenet", taps=["final_layer"])
    assert student.feature_shapes(64)["final_layer"] == (2048, 2, 2)
    with pytest.raises(ValueError, match="outputs 4 maps.*final_layer"):
        Student("hrnet_w18", library="timm", stem="imagenet").feature_shapes(64)
