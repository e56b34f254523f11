"""Evaluation: perfect and constant predictors against independently computed scores, and the
CLI's table, JSON and Δm on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.data import SyntheticScenes
from model.evaluate import (
    constant_predictor,
    eval_loader,
    evaluate,
    fit_constants,
    main,
    primary,
    read_reference,
)
from model.metrics import delta_m
from model.model import ASEModel
from model.presets import preset
from model.tasks import TASK_NAMES, require_dataset

SIZE = 32


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(SIZE, 6, seed=5, split="val")


def _targets(loader):
    return [targets for _, targets in loader]


def test_perfect_predictions_score_perfectly(scenes):
    loader = eval_loader(scenes, SIZE, TASK_NAMES, batch_size=3)
    batches = iter(_targets(loader))
    spec = require_dataset("synthetic")

    def oracle(images):
        targets = next(batches)
        out = {}
        for task in ("semseg", "parts"):
            labels = targets[task].clamp(max=spec.channels(task) - 1)  # 255 -> any class
            out[task] = torch.nn.functional.one_hot(labels, spec.channels(task)).permute(0, 3, 1, 2)
        for task in ("saliency", "edges"):
            out[task] = (targets[task] == 1).float()[:, None]
        out["normals"] = targets["normals"]
        return out

    results = evaluate(oracle, loader, TASK_NAMES, "synthetic")
    present = np.unique(np.concatenate([s.semseg.ravel() for s in scenes]))
    assert [results["semseg"]["IoU"][i] for i in present] == pytest.approx([100.0] * len(present))
    assert results["saliency"]["maxF"] == pytest.approx(100.0)
    assert results["normals"]["mean"] < 0.01 and results["normals"]["under_11.25"] == 100.0
    # Not exactly 100: the approximation thins the 1 px labels again (corner pixels go), and
    # at 32 px the tolerance (0.0075 of the diagonal) is below one pixel.
    assert 95.0 < results["edges"]["odsF"] <= 100.0


def test_constant_predictors_match_hand_computed_scores(scenes):
    loader = eval_loader(scenes, SIZE, TASK_NAMES, batch_size=4)
    constants = fit_constants(scenes, TASK_NAMES, "synthetic")
    semseg = np.stack([s.semseg for s in scenes])
    saliency = np.stack([s.saliency for s in scenes])
    assert constants["semseg"] == np.bincount(semseg[semseg != 255].ravel()).argmax()

    background = evaluate(
        constant_predictor(constants, TASK_NAMES, "synthetic", 0.0), loader, TASK_NAMES, "synthetic"
    )
    labelled = semseg[semseg != 255]
    share = (labelled == constants["semseg"]).mean()  # IoU of the majority class, others 0
    assert background["semseg"]["mIoU"] == pytest.approx(100 * share / 6)
    assert background["saliency"]["maxF"] == 0.0 and background["edges"]["odsF"] == 0.0

    foreground = evaluate(
        constant_predictor(constants, TASK_NAMES, "synthetic", 1.0), loader, TASK_NAMES, "synthetic"
    )
    precision = (saliency == 1).sum() / (saliency != 255).sum()  # recall is 1
    f = 1.3 * precision / (0.3 * precision + 1)
    assert foreground["saliency"]["maxF"] == pytest.approx(100 * f)

    normal = np.array(constants["normals"])
    vectors = np.concatenate([s.normals[s.normals_valid] for s in scenes])
    angles = np.degrees(np.arccos(np.clip(vectors @ normal, -1, 1)))
    assert background["normals"]["mean"] == pytest.approx(angles.mean(), rel=1e-4)


def test_cli_writes_table_json_and_delta_m(tmp_path, capsys):
    config = preset("tiny").model
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", ASEModel(config), step=3)
    reference = {"semseg": 20.0, "parts": 10.0, "saliency": 30.0, "normals": 40.0, "edges": 5.0}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    report = main(
        [
            str(checkpoint),
            "--data",
            "synthetic",
            "--split",
            "test",
            "--count",
            "4",
            "--baselines",
            "--reference",
            str(tmp_path / "ref.json"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["step"] == 3 and written["images"] == 4
    assert set(written["results"]) == set(TASK_NAMES) and len(written["baselines"]) == 2
    assert written["delta_m"] == pytest.approx(delta_m(primary(report["results"]), reference))
    assert read_reference(tmp_path / "out.json") == pytest.approx(written["primary"])
    table = capsys.readouterr().out
    assert "| model | normals | mean" in table and "all-foreground" in table


def test_training_split_and_missing_root_are_refused(tmp_path):
    config = preset("tiny").model
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", ASEModel(config))
    with pytest.raises(ValueError, match="held-out"):
        main([str(checkpoint), "--data", "synthetic", "--split", "train"])
    with pytest.raises(FileNotFoundError, match="root not found"):
        main([str(checkpoint), "--data", str(tmp_path / "nowhere")])
