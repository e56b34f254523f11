"""Lean graphs (export/lean.py, the fp32 default) against ``--plain`` ones (standard ONNX ops
only): both verified against eager, equal to each other, and the lean router's top-k keeps the
tie rule of ``model.routing.top_k_mask`` (lowest expert index wins)."""

import numpy as np
import onnx
import torch

from export.check import check_model_dir, open_session
from export.to_onnx import export_checkpoint
from model.checkpoint import save_checkpoint
from tests.export.tiny_export import checkpoint_of, export_tiny_model_dir
from tests.model.tiny import tiny_model


def run(path, images, stream_image, stream_task):
    session = open_session(path)
    feeds = {"images": images, "stream_image": stream_image, "stream_task": stream_task}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_plain_graph_uses_standard_ops_and_equals_the_lean_one(ase_dir, tmp_path):
    plain = export_tiny_model_dir(tmp_path / "plain", "ase", dispatch="dense", lean=False)
    graph = onnx.load(str(plain / "model.dense.onnx")).graph
    assert {node.domain for node in graph.node} == {""}  # no com.microsoft op at all
    report = check_model_dir(plain, checkpoint_of(plain), seed=7)
    assert report.passed, report.summary()
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    streams = np.array([2, 0, 1, 0, 2], np.int64), np.array([4, 0, 3, 1, 0], np.int64)
    lean_out = run(ase_dir / "model.dense.onnx", images, *streams)
    plain_out = run(plain / "model.dense.onnx", images, *streams)
    for name, value in plain_out.items():
        np.testing.assert_allclose(lean_out[name], value, atol=1e-5, err_msg=name)


def test_lean_router_breaks_ties_towards_the_lowest_expert(tmp_path):
    """All routed logits exactly 0: every token ties on every expert, so top-k must pick
    experts 0..k-1 (as ``top_k_mask`` does), in ONNX Runtime's TopK as in eager."""
    model = tiny_model("ase", spec="16/3/1/4").eval()
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.adapter.router.routed_weight.zero_()
    checkpoint = save_checkpoint(tmp_path / "ties.pt", model, step=0)
    model_dir = export_checkpoint(checkpoint, tmp_path / "ties", dispatch="auto")
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    streams = np.array([0, 1, 1], np.int64), np.array([0, 2, 4], np.int64)
    expected = np.zeros((3, 2, 16))
    expected[..., :3] = 16  # k = 3 lowest routed experts take all 16 tokens
    expected[..., 15] = 16  # the shared expert sees every token
    for mode in ("dense", "sparse"):
        tokens = run(model_dir / f"model.{mode}.onnx", images, *streams)["expert_tokens"]
        np.testing.assert_array_equal(tokens, expected, err_msg=mode)
