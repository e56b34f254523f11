"""Metrics against hand-computed cases and brute-force re-derivations of the formulas."""

import math

import numpy as np
import pytest

from model.metrics import (
    ConfusionMIoU,
    EdgeMetrics,
    NormalsMetrics,
    SaliencyMetrics,
    delta_m,
    task_metric,
    thin,
)

# confusion[target, pred]: 5 of class 0 right, 1 of them called 1; ...
HAND_CONFUSION = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def _pixels_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(t, p) for t in range(3) for p in range(3) for _ in range(confusion[t, p])]
    target, pred = (np.array(column) for column in zip(*pairs, strict=True))
    return pred, target


def test_miou_from_hand_built_confusion_with_ignore_and_an_absent_class():
    pred, target = _pixels_from_confusion(HAND_CONFUSION)
    # Ignored pixels may carry any prediction; they must not count.
    pred = np.concatenate([pred, [0, 1, 2]])
    target = np.concatenate([target, [255, 255, 255]])
    metric = ConfusionMIoU(num_classes=4)  # class 3 appears nowhere: IoU 0, still averaged
    metric.update(pred[:10], target[:10])  # split over two updates: summed over the set
    metric.update(pred[10:], target[10:])
    result = metric.compute()
    expected = [5 / 8, 3 / 7, 4 / 5, 0.0]  # TP / (TP + FP + FN) by hand
    assert result["IoU"] == pytest.approx([100 * v for v in expected])
    assert result["mIoU"] == pytest.approx(100 * sum(expected) / 4)
    assert result["pixel_accuracy"] == pytest.approx(100 * 12 / 16)


def test_miou_rejects_ids_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        ConfusionMIoU(3).update(np.array([3]), np.array([0]))


def _brute_force_f(pred, target, threshold, beta2=0.3):
    positive = pred > threshold
    tp = np.sum(positive & (target == 1))
    fp = np.sum(positive & (target == 0))
    fn = np.sum(~positive & (target == 1))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0  # MTI-Net: both empty -> 1
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall) if tp else 0.0
    return f, precision, recall, iou


def test_saliency_maxf_tiny_case_by_hand():
    pred = np.array([[0.1, 0.4], [0.6, 0.9], [0.99, 0.0]])
    target = np.array([[0, 1], [1, 0], [255, 255]])
    metric = SaliencyMetrics()
    metric.update(pred, target)
    # Best threshold in (0.1, 0.4): predicted {0.4, 0.6, 0.9}: P = 2/3, R = 1.
    by_hand = 1.3 * (2 / 3) * 1 / (0.3 * (2 / 3) + 1)
    assert metric.compute()["maxF"] == pytest.approx(100 * by_hand)


def test_saliency_protocols_match_brute_force_over_two_images():
    rng = np.random.default_rng(3)
    pred = rng.random((2, 9, 9))
    target = (rng.random((2, 9, 9)) > 0.6).astype(np.uint8)
    target[0, :2] = 255
    metric = SaliencyMetrics()
    metric.update(pred, target)
    result = metric.compute()
    valid = target != 255
    set_f = max(
        _brute_force_f(pred[valid], target[valid], t)[0] for t in np.linspace(0.05, 0.95, 19)
    )
    per_image = np.array(
        [
            [_brute_force_f(pred[i][valid[i]], target[i][valid[i]], t)[1:] for i in range(2)]
            for t in np.linspace(0.2, 0.9, 15)
        ]
    ).mean(axis=1)  # (thresholds, [P, R, IoU]) averaged over images
    p, r = per_image[:, 0], per_image[:, 1]
    mti_f = np.max(2 * p * r / (p + r))  # MTI-Net: F1 of the mean P and R
    assert result["maxF"] == pytest.approx(100 * set_f)
    assert result["mti_maxF"] == pytest.approx(100 * mti_f)
    assert result["mti_mIoU"] == pytest.approx(100 * per_image[:, 2].max())


def test_normals_angular_error_of_known_vectors():
    pred = np.zeros((3, 1, 4))
    target = np.zeros((3, 1, 4))
    # pixel 0: 90 deg; pixel 1: 45 deg; pixel 2: same direction, other length; pixel 3: invalid.
    for i, (p, t) in enumerate(
        [((1, 0, 0), (0, 1, 0)), ((1, 1, 0), (1, 0, 0)), ((0, 0, 2), (0, 0, 1)), ((1, 0, 0),) * 2]
    ):
        pred[:, 0, i], target[:, 0, i] = p, t
    target[:, 0, 3] = 255  # PASCAL's invalid code
    metric = NormalsMetrics()
    metric.update(pred, target)
    result = metric.compute()
    assert result["mean"] == pytest.approx(45.0)
    assert result["median"] == pytest.approx(45.0, abs=0.01)
    assert result["rmse"] == pytest.approx(math.sqrt((90**2 + 45**2) / 3))
    for key in ("under_11.25", "under_22.5", "under_30"):
        assert result[key] == pytest.approx(100 / 3)


def test_normals_explicit_mask_overrides_the_default():
    pred = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]])  # (3, 1, 2)
    target = np.array([[[1.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]])
    metric = NormalsMetrics()
    metric.update(pred, target, valid=np.array([[True, False]]))
    assert metric.compute()["mean"] == pytest.approx(0.0)


def _line_image(size=200, row=100):
    edges = np.zeros((size, size), dtype=np.uint8)
    edges[row, 20:180] = 1
    return edges


@pytest.mark.parametrize(("shift", "expected"), [(0, 100.0), (2, 100.0), (5, 0.0)])
def test_edge_odsf_matches_within_the_tolerance_only(shift, expected):
    # Tolerance 0.0075 * diagonal(200x200) = 2.12 px: a 2 px shift matches, 5 px does not.
    target = _line_image()
    pred = _line_image(row=100 + shift).astype(np.float64)
    metric = EdgeMetrics(thresholds=5)
    metric.update(pred, target)
    assert metric.compute()["odsF"] == pytest.approx(expected)


@pytest.mark.parametrize(("shift", "expected"), [(2, 100.0), (3, 0.0)])
def test_edge_fixed_pixel_radius_whatever_the_image_size(shift, expected):
    # 2 px on a 200 px image (the diagonal rule would allow 2.12) and on a 600 px one (6.4).
    for size in (200, 600):
        target, pred = _line_image(size), _line_image(size, row=100 + shift).astype(np.float64)
        metric = EdgeMetrics(thresholds=5, radius_px=2)
        metric.update(pred, target)
        assert metric.compute()["odsF"] == pytest.approx(expected)


def test_edge_ignored_pixels_do_not_count_and_bce_by_hand():
    target = _line_image()
    pred = _line_image().astype(np.float64)
    pred[10, :] = 1.0  # a false edge ...
    target[5:15, :] = 255  # ... inside an ignored band
    metric = EdgeMetrics(thresholds=3)
    metric.update(pred, target)
    assert metric.compute()["odsF"] == pytest.approx(100.0)

    half = np.zeros((2, 2), dtype=np.uint8)
    half[0] = 1
    bce = EdgeMetrics(thresholds=1)
    bce.update(np.full((2, 2), 0.5), half)
    # 0.5 * (0.95 ln 2) + 0.5 * (0.05 ln 2)
    assert bce.compute()["bce"] == pytest.approx(0.5 * math.log(2))


def test_thinning_reduces_a_thick_bar_to_a_connected_line():
    bar = np.zeros((20, 40), dtype=bool)
    bar[8:13, 5:35] = True  # 5 px thick
    line = thin(bar)
    assert line.any() and np.all(line <= bar)
    inner_columns = line[:, 8:32].sum(axis=0)
    assert np.all(inner_columns == 1), inner_columns


def test_delta_m_on_a_tiny_table():
    reference = {"semseg": 50.0, "normals": 20.0, "edges": 40.0}
    # +10% semseg, normals error 18 vs 20 is +10% (lower is better), edges -5%.
    results = {"semseg": 55.0, "normals": 18.0, "edges": 38.0}
    assert delta_m(results, reference) == pytest.approx((10 + 10 - 5) / 3)
    assert delta_m(reference, reference) == 0.0
    with pytest.raises(ValueError, match="lacks"):
        delta_m({"parts": 1.0}, reference)


def test_task_metric_picks_the_protocol_of_each_kind():
    assert isinstance(task_metric("semseg", 6), ConfusionMIoU)
    assert isinstance(task_metric("saliency"), SaliencyMetrics)
    assert isinstance(task_metric("normals"), NormalsMetrics)
    assert isinstance(task_metric("edges"), EdgeMetrics)
    with pytest.raises(ValueError, match="num_classes"):
        task_metric("parts")
