"""Benchmark metrics of the five tasks as NumPy accumulators, plus the multi-task Δm.

Each accumulator has ``update(pred, target)`` (one batch; called any number of times) and
``compute() -> dict``. Scores that are fractions are reported in percent (0-100), angles in
degrees. Inputs are NumPy arrays (call ``.numpy()`` on tensors); batches are (B, H, W) or a
single (H, W) image, normals (B, 3, H, W) or (3, H, W), channel first like the model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from model.tasks import IGNORE_INDEX, TASK_NAMES, TASKS

_EPS = 1e-12


def _batched(array: np.ndarray, image_ndim: int) -> np.ndarray:
    """Add a batch axis to a single image."""
    array = np.asarray(array)
    return array[None] if array.ndim == image_ndim else array


def _check_same_shape(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")


class ConfusionMIoU:
    """mIoU of ``semseg`` / ``parts`` from one confusion matrix summed over the whole set.

    Pixels whose target is 255 are skipped. IoU_c = TP / (TP + FP + FN); a class that appears
    neither in any target nor in any prediction has 0/0 and counts as IoU 0 in the mean, which
    still runs over all ``num_classes`` classes (the benchmark's "absent classes count as 0").
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [target, pred]

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """``pred``: class ids (not logits), same shape as ``target``."""
        pred, target = np.asarray(pred), np.asarray(target)
        _check_same_shape(pred, target)
        keep = target != self.ignore_index
        pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
        for name, ids in (("prediction", pred), ("target", target)):
            if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"{name} ids outside [0, {self.num_classes}): {ids.max()}")
        index = target * self.num_classes + pred
        self.confusion += np.bincount(index, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )  # (C_target, C_pred)

    def compute(self) -> dict:
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
        total = self.confusion.sum()
        return {
            "mIoU": 100.0 * float(iou.mean()),
            "IoU": [100.0 * float(v) for v in iou],
            "pixel_accuracy": 100.0 * float(tp.sum() / total) if total else 0.0,
        }


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many values are strictly above it."""
    return len(values) - np.searchsorted(np.sort(values), thresholds, side="right")


class SaliencyMetrics:
    """Saliency in the two protocols of the literature (InvPT maxF; MTI-Net maxF and mIoU).

    - ``maxF`` (InvPT family): thresholds 0.05, 0.10, ..., 0.95 (19); TP/FP/FN summed over the
      whole set per threshold, F from the set's precision and recall, max over thresholds.
    - ``mti_maxF`` / ``mti_mIoU`` (MTI-Net, reported by M3ViT and ASE): 15 thresholds evenly
      in [0.2, 0.9]; per image precision, recall and IoU at each threshold, averaged over
      images; maxF = max over thresholds of F1 = 2PR / (P + R) of the mean precision and mean
      recall (MTI-Net's F is F1, not beta^2 = 0.3); mIoU = max over thresholds of the mean IoU.
      An image whose target and thresholded prediction are both empty has IoU 1 (MTI-Net's
      ``jaccard``); its 0/0 precision or recall counts as 0.
    A pixel is predicted salient when its probability is strictly above the threshold;
    target pixels of 255 are skipped.
    """

    BETA2 = 0.3

    def __init__(self) -> None:
        self.thresholds = np.linspace(0.05, 0.95, 19)
        self.mti_thresholds = np.linspace(0.2, 0.9, 15)
        self.counts = np.zeros((3, 19), dtype=np.int64)  # set-wide TP, FP, FN per threshold
        self.mti_sums = np.zeros((3, 15))  # summed per-image precision, recall, IoU
        self.images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """``pred``: probabilities in [0, 1]; ``target``: {0, 1, 255}; (B, H, W) or (H, W)."""
        pred, target = _batched(pred, 2), _batched(target, 2)
        _check_same_shape(pred, target)
        for probabilities, labels in zip(pred, target, strict=True):
            positives = probabilities[labels == 1].ravel()
            negatives = probabilities[labels == 0].ravel()
            self.counts += self._tp_fp_fn(positives, negatives, self.thresholds)
            tp, fp, fn = self._tp_fp_fn(positives, negatives, self.mti_thresholds)
            iou = np.where(tp + fp + fn > 0, _ratio(tp, tp + fp + fn), 1.0)  # both empty: 1
            self.mti_sums += [_ratio(tp, tp + fp), _ratio(tp, tp + fn), iou]
            self.images += 1

    @staticmethod
    def _tp_fp_fn(positives, negatives, thresholds) -> np.ndarray:
        tp = _count_above(positives, thresholds)
        fp = _count_above(negatives, thresholds)
        return np.stack([tp, fp, len(positives) - tp])  # (3, T)

    @classmethod
    def f_measure(cls, precision, recall, beta2: float | None = None):
        """F_beta (beta^2 = 0.3 unless given); 0 where precision and recall are both 0."""
        beta2 = cls.BETA2 if beta2 is None else beta2
        precision, recall = np.asarray(precision, float), np.asarray(recall, float)
        return _ratio((1 + beta2) * precision * recall, beta2 * precision + recall)

    def compute(self) -> dict:
        tp, fp, fn = self.counts.astype(np.float64)
        set_f = self.f_measure(_ratio(tp, tp + fp), _ratio(tp, tp + fn))
        precision, recall, iou = self.mti_sums / max(self.images, 1)
        return {
            "maxF": 100.0 * float(set_f.max()),
            "mti_maxF": 100.0 * float(self.f_measure(precision, recall, beta2=1.0).max()),
            "mti_mIoU": 100.0 * float(iou.max()),
        }


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.where(denominator > 0, numerator / np.maximum(denominator, _EPS), 0.0)


class NormalsMetrics:
    """Angular error of surface normals in degrees over valid pixels.

    Both vectors are L2-normalised first. Mean, RMSE and the fractions under 11.25/22.5/30
    degrees are exact; the median comes from a histogram with 0.01 degree bins (exact to
    0.01 degree), so memory stays constant over a whole dataset.
    """

    BIN = 0.01  # degrees

    def __init__(self) -> None:
        self.histogram = np.zeros(int(round(180 / self.BIN)) + 1, dtype=np.int64)
        self.sum = self.sum_squares = 0.0
        self.count = 0
        self.under = {11.25: 0, 22.5: 0, 30.0: 0}

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """(B, 3, H, W) or (3, H, W) vectors; ``valid`` (B, H, W) bool, by default the target
        pixels that are neither all 255 (PASCAL's invalid code) nor zero vectors."""
        pred, target = _batched(pred, 3).astype(np.float64), _batched(target, 3).astype(np.float64)
        _check_same_shape(pred, target)
        if valid is None:
            valid = ~(target == IGNORE_INDEX).all(axis=1) & (np.abs(target).sum(axis=1) > 0)
        valid = _batched(valid, 2).astype(bool)
        pred = np.moveaxis(pred, 1, -1)[valid]  # (P, 3)
        target = np.moveaxis(target, 1, -1)[valid]  # (P, 3)
        cosine = np.einsum("pi,pi->p", _normalise(pred), _normalise(target))
        angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
        self.sum += float(angles.sum())
        self.sum_squares += float((angles**2).sum())
        self.count += angles.size
        for limit in self.under:
            self.under[limit] += int((angles < limit).sum())
        bins = np.minimum((angles / self.BIN).astype(np.int64), len(self.histogram) - 1)
        self.histogram += np.bincount(bins, minlength=len(self.histogram))

    def compute(self) -> dict:
        if not self.count:
            raise ValueError("NormalsMetrics: no valid pixel was seen")
        cumulative = np.cumsum(self.histogram)
        median_bin = int(np.searchsorted(cumulative, self.count / 2))
        result = {
            "mean": self.sum / self.count,
            "median": (median_bin + 0.5) * self.BIN,
            "rmse": float(np.sqrt(self.sum_squares / self.count)),
        }
        for limit, hits in self.under.items():
            result[f"under_{limit:g}"] = 100.0 * hits / self.count
        return result


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), _EPS)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 2-D bool mask to 1 px lines (vectorised sub-iterations)."""
    mask = mask.copy()
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(mask, 1).astype(np.uint8)
            # Neighbours P2..P9, clockwise from north.
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:],
                 p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]  # fmt: skip  # 3x3 ring order
            count = sum(n)
            transitions = sum((n[i] == 0) & (n[(i + 1) % 8] == 1) for i in range(8))
            if step == 0:
                side = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                side = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            remove = mask & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                mask &= ~remove
                changed = True
        if not changed:
            return mask


class EdgeMetrics:
    """Boundary odsF, an APPROXIMATION of SEISM's, plus the balanced BCE loss.

    Differences from SEISM (MATLAB), stated so nobody compares the numbers blindly:
    predictions are binarised at each threshold and thinned morphologically (Zhang-Suen), with
    no oriented non-maximum suppression; matching uses distance transforms: a predicted edge
    pixel is correct when a target edge lies within ``tolerance * diagonal`` pixels and a
    target pixel is recalled when a predicted edge lies that close. That allows many-to-one
    matches where SEISM solves a one-to-one assignment, so precision and recall are slightly
    optimistic. Counts are summed over the set per threshold; odsF = max over thresholds of
    F = 2PR / (P + R). Target pixels of 255 are skipped (neither counted nor matched against).
    ``bce`` is the mean over images of the balanced BCE of the probabilities, positive weight
    ``positive_weight`` (the benchmark's 0.95), negatives ``1 - positive_weight``.
    """

    def __init__(
        self, thresholds: int = 19, tolerance: float = 0.0075, positive_weight: float = 0.95
    ) -> None:
        self.thresholds = np.linspace(0.0, 1.0, thresholds + 2)[1:-1]
        self.tolerance, self.positive_weight = tolerance, positive_weight
        # Per threshold: matched predicted, all predicted, recalled target, all target pixels.
        self.counts = np.zeros((4, thresholds), dtype=np.int64)
        self.bce_sum, self.images = 0.0, 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """``pred``: probabilities in [0, 1]; ``target``: {0, 1, 255}; (B, H, W) or (H, W)."""
        pred, target = _batched(pred, 2), _batched(target, 2)
        _check_same_shape(pred, target)
        for probabilities, labels in zip(pred, target, strict=True):
            self._update_image(probabilities.astype(np.float64), labels)

    def _update_image(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        valid, truth = labels != IGNORE_INDEX, labels == 1
        radius = self.tolerance * np.hypot(*labels.shape)
        # Distance of every pixel to the nearest target edge (inf-like when there is none).
        to_truth = (
            ndimage.distance_transform_edt(~truth) if truth.any() else np.full(labels.shape, np.inf)
        )
        for index, threshold in enumerate(self.thresholds):
            edges = thin(probabilities > threshold) & valid
            to_pred = (
                ndimage.distance_transform_edt(~edges)
                if edges.any()
                else np.full(labels.shape, np.inf)
            )
            self.counts[:, index] += [
                int((edges & (to_truth <= radius)).sum()),
                int(edges.sum()),
                int((truth & (to_pred <= radius)).sum()),
                int(truth.sum()),
            ]
        self.bce_sum += self._balanced_bce(probabilities[valid], truth[valid])
        self.images += 1

    def _balanced_bce(self, probabilities: np.ndarray, truth: np.ndarray) -> float:
        if not probabilities.size:
            return 0.0
        p = np.clip(probabilities, 1e-7, 1 - 1e-7)
        w = self.positive_weight
        losses = np.where(truth, -w * np.log(p), -(1 - w) * np.log(1 - p))
        return float(losses.mean())

    def compute(self) -> dict:
        matched_p, all_p, matched_r, all_r = self.counts.astype(np.float64)
        precision, recall = _ratio(matched_p, all_p), _ratio(matched_r, all_r)
        f = _ratio(2 * precision * recall, precision + recall)
        best = int(f.argmax())
        return {
            "odsF": 100.0 * float(f[best]),
            "ods_threshold": float(self.thresholds[best]),
            "bce": self.bce_sum / max(self.images, 1),
        }


PRIMARY_METRIC: dict[str, str] = {
    "semseg": "mIoU",
    "parts": "mIoU",
    "saliency": "mti_mIoU",  # what M3ViT and ASE report
    "normals": "mean",
    "edges": "odsF",
}
"""The number per task that tables and Δm use, a key of that task's ``compute()`` dict."""

LOWER_IS_BETTER = tuple(name for name in TASK_NAMES if TASKS[name].kind == "vector")
"""Tasks whose primary metric is an error (normals: mean angle)."""


def delta_m(
    results: Mapping[str, float],
    reference: Mapping[str, float],
    lower_is_better: tuple[str, ...] = LOWER_IS_BETTER,
) -> float:
    """Δm in percent: mean over the tasks of ``results`` of s_t (M_t - M_ref,t) / M_ref,t,
    s_t = -1 for tasks in ``lower_is_better``, +1 otherwise. Keys are task names."""
    if not results:
        raise ValueError("delta_m: no results given")
    missing = [task for task in results if task not in reference]
    if missing:
        raise ValueError(f"delta_m: reference lacks {missing}")
    terms = []
    for task, value in results.items():
        if reference[task] == 0:
            raise ValueError(f"delta_m: reference of {task!r} is 0")
        sign = -1.0 if task in lower_is_better else 1.0
        terms.append(sign * (value - reference[task]) / reference[task])
    return 100.0 * float(np.mean(terms))


def task_metric(task: str, num_classes: int | None = None):
    """A fresh accumulator for ``task`` (``num_classes`` is needed for ``classes`` tasks)."""
    kind = TASKS[task].kind
    if kind == "classes":
        if num_classes is None:
            raise ValueError(f"task {task!r} needs num_classes")
        return ConfusionMIoU(num_classes)
    if kind == "vector":
        return NormalsMetrics()
    return SaliencyMetrics() if task == "saliency" else EdgeMetrics()
