"""``--int8``: a dynamically quantised CPU graph beside the fp32 ones, that the server's
reader and runtime pick for the CPU provider, and whose label maps agree with the fp32 graph's
(threshold 98% of pixels, export/check.py's int8 tolerance; measured >= 98.8% on tiny random
models and 99.9% on the demo checkpoint)."""

import numpy as np
import pytest

from export.check import check_model_dir, open_session
from export.contract import read_metadata
from export.quantize import quantized_node_count
from export.to_onnx import main, write_int8_graph
from model.tasks import TASK_NAMES
from server.modeldir import load_model_dir
from server.runtime import ModelRuntime
from tests.export.tiny_export import checkpoint_of, export_tiny_model_dir

AGREEMENT = 0.98


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    return export_tiny_model_dir(tmp_path_factory.mktemp("int8") / "m", "ase", int8=True)


def test_metadata_records_the_int8_graph_for_the_cpu(int8_dir):
    metadata = read_metadata(int8_dir)
    entry = metadata.graphs["int8"]
    assert entry.file == "model.int8.onnx" and entry.precision == "int8"
    assert entry.quantized_from == "sparse"  # tiny: N*r > d, the CPU's fp32 graph is sparse
    assert metadata.provider_graph == {
        "CUDAExecutionProvider": "sparse",
        "CPUExecutionProvider": "int8",
    }
    assert metadata.precision == "fp32"  # the directory's other graphs
    assert [metadata.graph_precision(mode) for mode in ("int8", "sparse")] == ["int8", "fp32"]
    assert quantized_node_count(int8_dir / "model.int8.onnx") > 0


def test_server_runs_the_int8_graph_on_the_cpu(int8_dir):
    runtime = ModelRuntime(load_model_dir(int8_dir), ["CPUExecutionProvider"], threads=1)
    assert runtime.graph.name == "model.int8.onnx"
    assert runtime.warm_up(max_batch=2) > 0


def test_int8_label_maps_agree_with_fp32(int8_dir):
    report = check_model_dir(int8_dir, checkpoint_of(int8_dir), seed=2)
    assert report.passed, report.summary()
    int8, fp32 = (open_session(int8_dir / f"model.{m}.onnx") for m in ("int8", "sparse"))
    images = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    feeds = {
        "images": images,
        "stream_image": np.repeat(np.arange(4, dtype=np.int64), 5),
        "stream_task": np.tile(np.arange(5, dtype=np.int64), 4),
    }
    got, want = int8.run(None, feeds), fp32.run(None, feeds)
    for task in ("semseg", "parts"):
        index = TASK_NAMES.index(task)
        agreement = (got[index].argmax(1) == want[index].argmax(1)).mean()
        assert agreement >= AGREEMENT, (task, agreement)
    normals = TASK_NAMES.index("normals")
    assert not np.array_equal(got[normals], want[normals])  # really quantised, not fp32


def test_int8_graph_is_deterministic(int8_dir, tmp_path):
    again = write_int8_graph(int8_dir / "model.sparse.onnx", tmp_path / "again.onnx")
    assert again.read_bytes() == (int8_dir / "model.int8.onnx").read_bytes()


def test_int8_with_fp16_is_refused(tmp_path, capsys):
    code = main([str(tmp_path / "ckpt.pt"), "--int8", "--fp16"])
    assert code != 0 and "--int8" in capsys.readouterr().err
