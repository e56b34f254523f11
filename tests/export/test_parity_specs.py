"""Parity for the variants without an expert bank and for the paper's finer-grained specs
(ASE 16/3/1/4 itself is covered in test_parity.py)."""

import pytest

from export.check import check_model_dir
from tests.export.tiny_export import checkpoint_of, export_tiny_model_dir


@pytest.mark.parametrize(
    ("routing", "spec", "dispatch", "graphs"),
    [
        ("lora", "16/3/1/4", "auto", {"dense"}),  # no expert bank: auto writes dense only
        ("none", "16/3/1/4", "auto", {"dense"}),
        ("ase", "32/6/2/2", "sparse", {"sparse"}),  # k+S = 8 experts through the op
        ("ase", "64/12/4/1", "auto", {"dense", "sparse"}),
    ],
)
def test_spec_matches_eager(tmp_path, routing, spec, dispatch, graphs):
    model_dir = export_tiny_model_dir(tmp_path / "m", routing, spec, dispatch=dispatch)
    report = check_model_dir(model_dir, checkpoint_of(model_dir), seed=5)
    assert report.passed, report.summary()
    assert {r.graph for r in report.results} == graphs
    assert all(r.tokens_moved == 0 and r.gate_mass_error <= 1e-4 for r in report.results)
