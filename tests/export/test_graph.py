"""The exported graphs and metadata against contract 3 and the server's reader: dynamic batch
and task count, only requested tasks computed, metadata hashes and names."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from export.check import check_graph_file, open_session
from export.contract import MetadataError, read_metadata
from model.tasks import DATASETS, TASK_NAMES
from server.modeldir import load_model_dir
from server.runtime import ModelRuntime

CHANNELS = {t: DATASETS["synthetic"].channels(t) for t in TASK_NAMES}


def run(session, batch, stream_image, stream_task, seed=0):
    images = np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    feeds = {
        "images": images,
        "stream_image": np.array(stream_image, np.int64),
        "stream_task": np.array(stream_task, np.int64),
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_metadata_follows_contract(ase_dir):
    metadata = read_metadata(ase_dir)
    assert metadata.io.outputs == (*TASK_NAMES, "expert_tokens", "shared_gate_mass")
    assert json.loads((ase_dir / "metadata.json").read_text())["adapters"] == {
        "spec": "16/3/1/4",
        "experts": 16,
        "k": 3,
        "shared": 1,
        "rank": 4,
        "routing": "ase",
        "layers": 2,
        "tokens_per_stream": 16,
        "shared_experts": [15],
    }
    assert metadata.provider_graph == {
        "CUDAExecutionProvider": "sparse",
        "CPUExecutionProvider": "sparse",  # tiny: N*r = 64 > d = 32, so dense has no edge
    }
    assert [t.channels for t in metadata.tasks] == [CHANNELS[t] for t in TASK_NAMES]
    assert metadata.version.endswith(metadata.source.checkpoint_sha256[:8])
    assert metadata.opset == 18


def test_server_reader_and_runtime_accept_the_export(ase_dir):
    model = load_model_dir(ase_dir)
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads=1)
    assert runtime.graph.name == "model.sparse.onnx"
    assert runtime.warm_up(max_batch=2) > 0


def test_graphs_pass_checker_and_use_the_moe_op_only_when_sparse(ase_dir):
    ops = {}
    for mode in ("dense", "sparse"):
        path = ase_dir / f"model.{mode}.onnx"
        check_graph_file(path)
        proto = onnx.load(str(path))
        assert proto.ir_version == 10
        ops[mode] = Counter(n.op_type for n in proto.graph.node if n.domain == "com.microsoft")
    lean = {"Attention": 2, "BiasGelu": 2, "Gelu": 10}  # per block; 2 per head (export/lean.py)
    assert ops == {"dense": Counter(lean), "sparse": Counter(lean, MoE=2)}


@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize(
    ("batch", "stream_image", "stream_task"),
    [(1, [0], [2]), (4, [3, 0, 2, 1, 0, 3, 1], [0, 4, 4, 1, 3, 2, 0]), (3, [2, 2], [1, 1])],
)
def test_dynamic_batch_and_task_count(ase_dir, mode, batch, stream_image, stream_task):
    outputs = run(open_session(ase_dir / f"model.{mode}.onnx"), batch, stream_image, stream_task)
    for task_id, task in enumerate(TASK_NAMES):
        rows = stream_task.count(task_id)
        assert outputs[task].shape == (rows, CHANNELS[task], 32, 32)  # empty when not asked
    assert outputs["expert_tokens"].shape == (len(stream_task), 2, 16)
    assert outputs["shared_gate_mass"].shape == (len(stream_task), 2)
    # Each token: k=3 routed + S=1 shared experts. (S=0 streams is not supported: onnxruntime
    # 1.31 dies with SIGFPE on an empty stream batch; the server never sends one.)
    np.testing.assert_array_equal(outputs["expert_tokens"].sum(-1), 16 * 4)


def test_a_stream_does_not_depend_on_other_tasks_in_the_batch(ase_dir):
    session = open_session(ase_dir / "model.dense.onnx")
    alone = run(session, 1, [0], [3])
    mixed = run(session, 2, [1, 0, 0, 1], [0, 1, 3, 4])
    np.testing.assert_allclose(mixed["normals"], alone["normals"], atol=1e-5)
    np.testing.assert_allclose(mixed["expert_tokens"][2], alone["expert_tokens"][0])


def test_tampered_graph_or_metadata_is_refused(ase_dir, tmp_path):
    for item in ase_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    graph = tmp_path / "model.dense.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(MetadataError, match="model.dense.onnx hash differs"):
        read_metadata(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    metadata["io"]["outputs"].reverse()
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(MetadataError, match="io.outputs"):
        read_metadata(tmp_path, verify_hashes=False)
