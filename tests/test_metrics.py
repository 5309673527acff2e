from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from repfusion_pl.metrics import NormalizedMeanError


def test_nme_hand_computed():
    # Two images, three keypoints; keypoints 0 and 1 are the "eyes" (normalisation_index).
    target = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, 10.0], [5.0, 5.0]]])
    preds = target.clone()
    preds[0, 2] += torch.tensor([3.0, 4.0])  # error 5 on one of three points; eyes 4 apart
    preds[1, 0] += torch.tensor([0.0, 2.0])  # error 2; eyes 10 apart
    preds[1, 1] += torch.tensor([1.0, 0.0])  # error 1
    expected = ((5 / 3) / 4 + (3 / 3) / 10) / 2  # = 0.25833...
    metric = NormalizedMeanError((0, 1))
    metric.update(preds[:1], target[:1])
    metric.update(preds[1:], target[1:])
    assert metric.compute().item() == pytest.approx(expected)


def test_nme_refuses_bad_shapes_and_coincident_reference_points():
    metric = NormalizedMeanError((0, 1))
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        metric.update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="coincide"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))


def test_per_class_f1_and_miou_as_configured_in_segmentation_hand_computed():
    # 3 classes; 255 pixels are ignored.
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    preds = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
    f1 = MulticlassF1Score(3, average="none", ignore_index=255)(preds, target)
    # class 0: tp 1, fp 1 (pixel [1,1]), fn 1 -> 2*1/(2+1+1) = 0.5
    # class 1: tp 2, fp 1, fn 0 -> 4/5 = 0.8 ; class 2: tp 1, fp 0, fn 1 -> 2/3
    torch.testing.assert_close(f1, torch.tensor([0.5, 0.8, 2 / 3]))
    iou = MulticlassJaccardIndex(3, average="macro", ignore_index=255)(preds, target)
    # IoU: 1/3, 2/3, 1/2
    assert iou.item() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
