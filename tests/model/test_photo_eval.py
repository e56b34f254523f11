"""The held-out photo protocol (model/photo_eval.py) on a tree written by the tests."""

import json
from dataclasses import replace

import numpy as np
import pytest

from model.checkpoint import save_checkpoint
from model.evaluate import main as evaluate_main
from model.model import ASEModel
from model.photo_eval import (
    PhotoPrediction,
    centred_person,
    held_out,
    load_truth,
    score,
    sobel_edges,
)
from model.tasks import IGNORE_INDEX, SCENES_AND_PHOTOS
from tests.model.photo_tree import SIZE, write_photo_tree
from tests.model.tiny import tiny_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_photo_tree(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def truths(root):
    return [load_truth(root, record) for record in held_out(root, "val")]


def test_labels_at_the_evaluation_size(truths):
    assert [t.name for t in truths] == ["astronaut-val", "chelsea-val"]
    person = truths[0]
    assert person.size == (144, 192)  # longest side 192, the photo's aspect (96 x 128)
    assert person.saliency[72, 96] == 1 and person.saliency[5, 5] == 0
    assert 0 < person.edges.sum() < 0.05 * person.edges.size  # a thin outline
    assert set(np.unique(person.person)) <= {0, 1, IGNORE_INDEX}


def test_the_teacher_itself_scores_full_marks_and_a_shifted_one_does_not(truths):
    def teacher(truth):
        return PhotoPrediction(
            truth.saliency.astype(float), truth.edges.astype(float), truth.person == 1
        )

    def shifted(truth):
        edges = np.roll(truth.edges, (4, 4), axis=(0, 1)).astype(float)  # 4 px: beyond 2 px
        return PhotoPrediction(None, edges, np.roll(truth.person == 1, 60, axis=1))

    perfect = score(teacher, truths)
    assert perfect["saliency_maxF"] == pytest.approx(100.0)
    assert perfect["edge_F"] == pytest.approx(100.0) and perfect["person_IoU"] == 100.0
    moved = score(shifted, truths)
    assert moved["saliency_maxF"] is None and moved["edge_F"] < 10 and moved["person_IoU"] < 60


def test_baselines_are_what_they_say():
    blob = centred_person(*SIZE)
    assert blob[SIZE[0] // 2, SIZE[1] // 2] and not blob[0, 0] and not blob[:, : SIZE[1] // 4].any()
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    edges = sobel_edges(image)
    assert edges.max() == 1.0 and edges[:, 9:11].min() == 1.0 and edges[:, :7].max() == 0.0


def test_the_command_line_scores_models_baselines_and_teachers(root, tmp_path):
    paths = []
    for seed, image_size in ((0, 32), (1, 48)):  # two models of two input sizes
        config = replace(
            tiny_config(image_size=image_size, patch_size=16), dataset=SCENES_AND_PHOTOS
        )
        paths.append(save_checkpoint(tmp_path / f"m{seed}.pt", ASEModel(config), step=seed))
    out = tmp_path / "photo.json"
    report = evaluate_main(
        [
            str(paths[0]),
            "--data",
            str(root),
            "--split",
            "val",
            "--baselines",
            "--compare",
            str(paths[1]),
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["rows"] == report["rows"]
    rows = list(report["rows"].values())
    assert len(rows) == 6 and report["images"] == 2
    for values in rows[:3]:  # the models and the baselines score all three
        assert all(0 <= values[k] <= 100 for k in ("saliency_maxF", "edge_F", "person_IoU"))
    assert rows[5]["person_IoU"] > 95  # the same box, resampled two ways at its border
    assert rows[4]["edge_F"] > rows[3]["edge_F"]  # a finer grid keeps more of the edges
