"""Evaluation on a written PASCAL_MT tree, images of three sizes, against independent
transcriptions of the reference protocols: scores at each image's original size with
predictions resized back by the server's rules, MTI-Net saliency (F1, IoU 1 when both empty),
normals only on the NYU-compatible classes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.data import PascalContext
from model.data.transforms import restore_size
from model.evaluate import constant_predictor, eval_loader, evaluate, main
from model.model import ASEModel
from model.presets import preset
from model.tasks import TASK_NAMES, require_dataset
from server.maps import restore_size as server_restore_size
from tests.model.pascal_tree import (
    IMAGES,
    reference_normals,
    reference_saliency,
    reference_semseg,
    write_tree,
)

SIZE = 16  # the predictors' (model's) input size
SPEC = require_dataset("pascal_context")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("pascal") / "PASCAL_MT")


def test_restore_size_follows_the_server():
    rng = np.random.default_rng(2)
    for height, width in [(20, 28), (7, 5), (16, 16), (40, 9)]:
        logits = rng.normal(size=(21, SIZE, SIZE)).astype(np.float32)
        ids = restore_size("classes", logits.argmax(axis=0), (height, width))
        np.testing.assert_array_equal(ids, server_restore_size("classes", logits, width, height))
        probability = rng.random((1, SIZE, SIZE)).astype(np.float32)
        np.testing.assert_array_equal(
            restore_size("probability", probability[0], (height, width)),
            server_restore_size("probability", probability, width, height),
        )
        vectors = rng.normal(size=(3, SIZE, SIZE)).astype(np.float32)
        np.testing.assert_allclose(
            restore_size("vector", vectors, (height, width)),
            server_restore_size("vector", vectors, width, height).transpose(2, 0, 1),
            atol=1e-6,
        )


def reference_miou(predictions: list[np.ndarray], labels: list[np.ndarray], classes: int):
    """Per class TP / (TP + FP + FN) over the whole set, 255 skipped, absent classes 0."""
    iou = []
    for c in range(classes):
        tp = sum(int(((p == c) & (t == c)).sum()) for p, t in zip(predictions, labels, strict=True))
        fp = sum(
            int(((p == c) & (t != c) & (t != 255)).sum())
            for p, t in zip(predictions, labels, strict=True)
        )
        fn = sum(int(((p != c) & (t == c)).sum()) for p, t in zip(predictions, labels, strict=True))
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else 0.0)
    return 100 * float(np.mean(iou))


def reference_mti_saliency(probabilities: list[np.ndarray], labels: list[np.ndarray]):
    """MTI-Net's eval_sal: per image and threshold jaccard (1 when both empty), precision and
    recall with 1e-12 in the denominators; averaged over images; F = 2PR / (P + R) of the
    means; max over the 15 thresholds of mean IoU and of F."""
    ious, fs = [], []
    for threshold in np.linspace(0.2, 0.9, 15):
        scores = []
        for probability, label in zip(probabilities, labels, strict=True):
            pred, gt = probability > threshold, label == 1
            union = (pred | gt).sum()
            iou = 1.0 if union == 0 else (pred & gt).sum() / union
            tp, fp, fn = (pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()
            scores.append((iou, tp / (tp + fp + 1e-12), tp / (tp + fn + 1e-12)))
        iou, precision, recall = np.mean(scores, axis=0)
        ious.append(iou)
        fs.append(2 * precision * recall / (precision + recall + 1e-12))
    return 100 * max(ious), 100 * max(fs)


def reference_normals_error(vectors: list[np.ndarray], ids: list[str], root) -> float:
    """Mean angle in degrees over the reference-valid pixels of every image."""
    angles = []
    for vector, image_id in zip(vectors, ids, strict=True):
        normals, valid = reference_normals(root, image_id)
        gt = normals[valid] / np.linalg.norm(normals[valid], axis=1, keepdims=True)
        pred = vector.transpose(1, 2, 0)[valid]
        pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
        angles.append(np.degrees(np.arccos(np.clip((gt * pred).sum(axis=1), -1, 1))))
    return float(np.concatenate(angles).mean())


def random_predictor(produced: list[dict[str, torch.Tensor]]):
    generator = torch.Generator().manual_seed(7)

    def predict(images):
        batch = images.shape[0]
        out = {
            task: torch.randn(batch, SPEC.channels(task), SIZE, SIZE, generator=generator)
            for task in ("semseg", "parts")
        }
        for task in ("saliency", "edges"):
            out[task] = torch.rand(batch, 1, SIZE, SIZE, generator=generator)
        normals = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
        out["normals"] = normals / normals.norm(dim=1, keepdim=True)
        produced.append(out)
        return out

    return predict


def test_scores_at_original_size_match_the_reference_protocols(root):
    source = PascalContext(root, "val")
    produced: list[dict[str, torch.Tensor]] = []
    loader = eval_loader(source, SIZE, TASK_NAMES, batch_size=2)  # sizes differ in a batch
    results = evaluate(random_predictor(produced), loader, TASK_NAMES, "pascal_context")
    per_image = [{t: p[t][i].numpy() for t in p} for p in produced for i in range(len(p["semseg"]))]
    ids = list(IMAGES)
    sizes = [IMAGES[i][0] for i in ids]
    restored = [
        {
            task: server_restore_size(
                (
                    "classes"
                    if task in ("semseg", "parts")
                    else "vector"
                    if task == "normals"
                    else "probability"
                ),
                p[task],
                size[1],
                size[0],
            )
            for task in p
        }
        for p, size in zip(per_image, sizes, strict=True)
    ]
    semseg = reference_miou(
        [r["semseg"] for r in restored], [reference_semseg(root, i) for i in ids], 21
    )
    parts = reference_miou([r["parts"] for r in restored], [s.parts for s in source], 7)
    sal_iou, sal_f = reference_mti_saliency(
        [r["saliency"] for r in restored], [reference_saliency(root, i) for i in ids]
    )
    normals = reference_normals_error(
        [r["normals"].transpose(2, 0, 1) for r in restored], ids, root
    )
    assert results["semseg"]["mIoU"] == pytest.approx(semseg)
    assert results["parts"]["mIoU"] == pytest.approx(parts)
    assert results["saliency"]["mti_mIoU"] == pytest.approx(sal_iou)
    assert results["saliency"]["mti_maxF"] == pytest.approx(sal_f)
    assert results["normals"]["mean"] == pytest.approx(normals, rel=1e-5)
    assert 0.0 <= results["edges"]["odsF"] <= 100.0


def test_hand_built_constant_predictions(root):
    """Nothing salient predicted: MTI-Net's IoU is 1 on the one image with no salient pixel
    and 0 on the two with some, so mIoU = 100/3; precision and recall are 0: F = 0."""
    constants = {"semseg": 0, "parts": 0, "normals": [0.0, 0.0, 1.0]}
    loader = eval_loader(PascalContext(root, "val"), SIZE, TASK_NAMES, batch_size=3)
    results = evaluate(
        constant_predictor(constants, TASK_NAMES, "pascal_context", 0.0),
        loader,
        TASK_NAMES,
        "pascal_context",
    )
    assert results["saliency"]["mti_mIoU"] == pytest.approx(100 / 3)
    assert results["saliency"]["mti_maxF"] == 0.0 and results["saliency"]["maxF"] == 0.0
    labels = np.concatenate([reference_semseg(root, i).ravel() for i in IMAGES])
    labelled = labels[labels != 255]
    assert results["semseg"]["mIoU"] == pytest.approx(100 * (labelled == 0).mean() / 21)
    z = np.concatenate(
        [reference_normals(root, i)[0][reference_normals(root, i)[1]] for i in IMAGES]
    )
    by_hand = np.degrees(np.arccos(z[:, 2] / np.linalg.norm(z, axis=1))).mean()
    assert results["normals"]["mean"] == pytest.approx(by_hand, rel=1e-5)


def test_cli_scores_the_tree_at_original_size_or_fixed_when_asked(root, tmp_path):
    config = replace(preset("tiny").model, dataset="pascal_context")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", ASEModel(config), step=1)
    common = [str(checkpoint), "--data", str(root), "--count", "0", "--baselines"]
    original = main([*common, "--json", str(tmp_path / "out.json")])
    assert original["resolution"] == "original" and original["images"] == 3
    background = original["baselines"]["majority / mean normal / all-background"]
    assert background["saliency"]["mti_mIoU"] == pytest.approx(100 / 3)
    labels = np.concatenate([reference_semseg(root, i).ravel() for i in IMAGES])
    majority = np.bincount(labels[labels != 255]).argmax()
    share = (labels[labels != 255] == majority).mean()
    assert background["semseg"]["mIoU"] == pytest.approx(100 * share / 21)
    fixed = main([*common, "--resolution", "fixed"])
    assert fixed["resolution"] == "fixed"
    fixed_background = fixed["baselines"]["majority / mean normal / all-background"]
    assert fixed_background["semseg"]["mIoU"] != pytest.approx(background["semseg"]["mIoU"])
