"""fp16 export: within the documented tolerance of export/check.py, fp32 inputs and outputs."""

import numpy as np
import onnx

from export.check import TOLERANCES, check_model_dir
from export.contract import read_metadata
from tests.export.tiny_export import checkpoint_of, export_tiny_model_dir


def test_fp16_graphs_within_documented_tolerance(tmp_path):
    model_dir = export_tiny_model_dir(tmp_path / "m16", "ase", fp16=True)
    metadata = read_metadata(model_dir)
    assert metadata.precision == "fp16"
    report = check_model_dir(model_dir, checkpoint_of(model_dir), seed=1)
    assert report.passed, report.summary()
    assert {r.graph for r in report.results} == {"dense", "sparse"}
    worst = max(max(r.map_error.values()) for r in report.results)
    assert 0 < worst <= TOLERANCES["fp16"].map_atol  # really fp16: not bit-equal to fp32
    for entry in metadata.graphs.values():
        graph = onnx.load(str(model_dir / entry.file))
        float_io = {
            v.type.tensor_type.elem_type for v in (*graph.graph.input[:1], *graph.graph.output)
        }
        assert float_io == {onnx.TensorProto.FLOAT}  # contract 3 dtypes kept
        weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert sum(int(np.prod(t.dims)) for t in weights) > 10_000  # weights stored in fp16
