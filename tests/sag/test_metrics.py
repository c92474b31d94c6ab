"""Metrics against values computed by hand on small masks."""

import numpy as np
import pytest
import torch

from sag import SegmentationMetrics, intersection_union, iou


def masks():
    gt1 = np.zeros((4, 4), bool)
    gt1[:2, :2] = True  # 4 pixels
    pred1 = np.zeros((4, 4), bool)
    pred1[:2, :3] = True  # 6 pixels, 4 overlap -> IoU 4/6
    gt2 = np.zeros((4, 4), bool)
    gt2[3, :] = True  # 4 pixels
    pred2 = np.zeros((4, 4), bool)
    pred2[3, :2] = True
    pred2[0, 3] = True  # 3 pixels, 2 overlap -> union 5 -> IoU 2/5
    gt3 = np.zeros((4, 4), bool)
    gt3[1:3, 1:3] = True
    pred3 = np.zeros((4, 4), bool)  # misses entirely: IoU 0, union 4
    return [(pred1, gt1), (pred2, gt2), (pred3, gt3)]


def test_hand_computed_metrics():
    metrics = SegmentationMetrics()
    values = [metrics.update(p, g) for p, g in masks()]
    assert values == pytest.approx([4 / 6, 2 / 5, 0.0])
    result = metrics.compute()
    assert result["count"] == 3
    assert result["mIoU"] == pytest.approx((4 / 6 + 2 / 5) / 3)
    assert result["cIoU"] == pytest.approx((4 + 2 + 0) / (6 + 5 + 4))
    assert result["acc@0.3"] == pytest.approx(2 / 3)
    assert result["acc@0.5"] == pytest.approx(1 / 3)
    assert result["acc@0.7"] == 0.0
    assert result["precision"] == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)
    assert result["recall"] == pytest.approx((1 + 2 / 4 + 0) / 3)


def test_each_expression_counts_once_and_tensors_work():
    metrics = SegmentationMetrics()
    for p, g in masks():
        metrics.update(torch.from_numpy(p), torch.from_numpy(g))
    assert len(metrics) == 3
    assert intersection_union(*masks()[0]) == (4, 6)
    assert iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        iou(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no expressions"):
        SegmentationMetrics().compute()
