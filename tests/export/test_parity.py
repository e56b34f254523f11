"""ONNX Runtime against PyTorch eager, per routing variant and per expert spec, both dispatch
modes, several task subsets and orders (export/check.py holds the criteria)."""

import pytest
import torch

from export.check import MAX_DRAWS, StreamCase, check_model_dir
from model.checkpoint import load_checkpoint
from model.routing import TaskRouter
from tests.export.tiny_export import checkpoint_of, export_tiny_model_dir


def assert_passes(model_dir, cases=None):
    report = check_model_dir(model_dir, checkpoint_of(model_dir), cases=cases, seed=3)
    assert report.results, "nothing was compared"
    assert report.passed, report.summary()
    return report


def test_ase_dense_and_sparse_match_eager(ase_dir):
    report = assert_passes(ase_dir)
    assert {r.graph for r in report.results} == {"dense", "sparse"}
    assert all(r.tokens_moved == 0 for r in report.results)  # router statistics equal


def test_more_task_layouts(ase_dir):
    cases = [
        StreamCase("edges first", 2, ((1, "edges"), (0, "semseg"), (1, "normals"))),
        StreamCase(
            "one image all tasks backwards",
            1,
            tuple((0, t) for t in ("edges", "normals", "saliency", "parts", "semseg")),
        ),
        StreamCase("batch of 5, one task", 5, tuple((i, "parts") for i in range(5))),
    ]
    assert_passes(ase_dir, cases)


@pytest.mark.parametrize(
    ("routing", "spec", "dispatch", "graphs"),
    [
        ("naive_shared", "16/3/1/4", "auto", {"dense", "sparse"}),
        ("moe", "16/4/0/4", "sparse", {"sparse"}),  # its dense form is ase's gated bank, S=0
    ],
)
def test_routing_variant_matches_eager(tmp_path, routing, spec, dispatch, graphs):
    model_dir = export_tiny_model_dir(tmp_path / "m", routing, spec, dispatch=dispatch)
    report = assert_passes(model_dir)
    assert {r.graph for r in report.results} == graphs


def test_a_routing_that_always_ties_is_reported_not_silently_compared(ase_dir):
    """Zeroed routers: every routed logit ties on every draw, so no draw is free of near-ties."""
    model = load_checkpoint(checkpoint_of(ase_dir))[0]
    for router in (m for m in model.modules() if isinstance(m, TaskRouter)):
        with torch.no_grad():
            router.routed_weight.zero_()
    case = StreamCase("one stream", 1, ((0, "semseg"),))
    report = check_model_dir(ase_dir, model, cases=[case], seed=3)
    assert all(r.notes and "near-tie" in r.notes[0] for r in report.results)
    assert report.summary().count(f"all {MAX_DRAWS} draws had a routing near-tie") == 2
