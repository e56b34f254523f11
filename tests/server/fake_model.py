"""A tiny model directory that honours contract 3 exactly, built with ``onnx.helper`` (no torch);
its ``metadata.json`` is what the exporter's own ``build_metadata`` writes for that shape.

The graph is not a ViT, but it has the real graph's inputs, outputs, shapes and dtypes, and every
output is a deterministic function of the inputs: each stream gathers its image, each task
selects its own streams (Equal/NonZero/Gather) and applies a per-pixel linear map plus its
kind's post-processing, and the router statistics come from top-k over logits of patch-averaged
colours, so different images route differently. ``heavy_matmuls`` adds input-dependent work
that changes no output, to make the model slow on purpose (queue and deadline tests);
``ballast_mb`` adds weights that change no output, to make the model large on purpose (its
memory coming and going with loads and unloads), read at indices that depend on the input, so
that ONNX Runtime cannot fold them away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.contract import GRAPH_FILES, PROVIDERS, Metadata, SourceInfo, write_metadata
from export.metadata import build_metadata
from model.config import AdapterConfig, BackboneConfig, ModelConfig
from model.tasks import DATASETS, TASK_NAMES, TASKS

OPSET = 18


def write_fake_model_dir(
    path: Path,
    tasks: tuple[str, ...] = TASK_NAMES,
    experts: int = 16,
    shared: int = 1,
    k: int = 3,
    layers: int = 2,
    size: int = 32,
    patch: int = 8,
    heavy_matmuls: int = 0,
    seed: int = 0,
    ballast_mb: int = 0,
) -> Path:
    """Write ``metadata.json`` and ``model.dense.onnx`` under ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tasks = tuple(t for t in TASK_NAMES if t in tasks)
    dataset = DATASETS["synthetic"]
    rng = np.random.default_rng(seed)
    routed = experts - shared
    tokens = (size // patch) ** 2
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    node("Gather", ["images", "stream_image"], "stream_images", axis=0)  # (S, 3, H, W)
    for name in tasks:
        tid, channels = TASK_NAMES.index(name), dataset.channels(name)
        node("Equal", ["stream_task", const(f"{name}_id", np.array(tid, np.int64))], f"{name}_is")
        node("NonZero", [f"{name}_is"], f"{name}_nz")  # (1, S_t)
        node(
            "Reshape",
            [f"{name}_nz", const(f"{name}_flat", np.array([-1], np.int64))],
            f"{name}_idx",
        )
        node("Gather", ["stream_images", f"{name}_idx"], f"{name}_x", axis=0)  # (S_t, 3, H, W)
        node("Transpose", [f"{name}_x"], f"{name}_hwc", perm=[0, 2, 3, 1])  # (S_t, H, W, 3)
        weight = rng.normal(0, 2.0, (3, channels)).astype(np.float32)
        bias = rng.normal(0, 0.5, (channels,)).astype(np.float32)
        node("MatMul", [f"{name}_hwc", const(f"{name}_w", weight)], f"{name}_mm")
        node("Add", [f"{name}_mm", const(f"{name}_b", bias)], f"{name}_lin")  # (S_t, H, W, C)
        raw = node("Transpose", [f"{name}_lin"], f"{name}_raw", perm=[0, 3, 1, 2])  # (S_t, C, H, W)
        kind = TASKS[name].kind
        if kind == "classes":
            node("Identity", [raw], name)
        elif kind == "probability":
            node("Sigmoid", [raw], name)
        else:
            axes = const(f"{name}_axes", np.array([1], np.int64))
            node("ReduceSumSquare", [raw, axes], f"{name}_sq", keepdims=1)
            node(
                "Add",
                [f"{name}_sq", const(f"{name}_eps", np.array(1e-6, np.float32))],
                f"{name}_sqe",
            )
            node("Sqrt", [f"{name}_sqe"], f"{name}_norm")
            node("Div", [raw, f"{name}_norm"], name)

    # Router: one token per patch, its feature the patch's mean colour.
    node(
        "AveragePool",
        ["stream_images"],
        "pooled",
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    node(
        "Reshape", ["pooled", const("tok_shape", np.array([0, 3, -1], np.int64))], "tok_ct"
    )  # (S, 3, T)
    node("Transpose", ["tok_ct"], "tok", perm=[0, 2, 1])  # (S, T, 3)
    w_routed = rng.normal(0, 3.0, (3, layers * routed)).astype(np.float32)
    task_bias = rng.normal(0, 1.0, (len(TASK_NAMES), layers * routed)).astype(np.float32)
    node("MatMul", ["tok", const("w_routed", w_routed)], "rl_tok")  # (S, T, L*R)
    node("Gather", [const("task_bias", task_bias), "stream_task"], "rl_task", axis=0)  # (S, L*R)
    node("Unsqueeze", ["rl_task", const("ax1", np.array([1], np.int64))], "rl_task3")  # (S, 1, L*R)
    node("Add", ["rl_tok", "rl_task3"], "rl_sum")
    layer_shape = np.array([0, 0, layers, -1], np.int64)
    node("Reshape", ["rl_sum", const("layer_shape", layer_shape)], "routed_logits")  # (S, T, L, R)
    nodes.append(
        helper.make_node(
            "TopK",
            ["routed_logits", const("k", np.array([k], np.int64))],
            ["top_v", "top_i"],
            axis=-1,
        )
    )  # (S, T, L, k)
    onehot_values = const("onehot_values", np.array([0, 1], np.float32))
    depth = const("depth", np.array(routed, np.int64))
    node("OneHot", ["top_i", depth, onehot_values], "onehot", axis=-1)  # (S, T, L, k, R)
    sum_axes = const("sum_axes", np.array([1, 3], np.int64))
    node("ReduceSum", ["onehot", sum_axes], "routed_tokens", keepdims=0)  # (S, L, R)
    if shared:
        node("Shape", ["stream_task"], "s_dim")
        node(
            "Concat",
            ["s_dim", const("ls", np.array([layers, shared], np.int64))],
            "shared_shape",
            axis=0,
        )
        full = const("full", np.full((1, 1, shared), tokens, np.float32))
        node("Expand", [full, "shared_shape"], "shared_tokens")  # (S, L, Sh)
        node("Concat", ["routed_tokens", "shared_tokens"], "expert_tokens", axis=2)  # (S, L, N)
        w_shared = rng.normal(0, 3.0, (3, layers * shared)).astype(np.float32)
        node("MatMul", ["tok", const("w_shared", w_shared)], "sl_tok")  # (S, T, L*Sh)
        node("Reshape", ["sl_tok", "layer_shape"], "shared_logits")  # (S, T, L, Sh)
        node("Concat", ["top_v", "shared_logits"], "gate_logits", axis=-1)  # (S, T, L, k+Sh)
        node("Softmax", ["gate_logits"], "gates", axis=-1)
        starts, ends = np.array([k], np.int64), np.array([k + shared], np.int64)
        node(
            "Slice",
            ["gates", const("st", starts), const("en", ends), const("ax", np.array([3]))],
            "sg",
        )
        node("ReduceSum", ["sg", sum_axes], "gate_mass", keepdims=0)  # (S, L)
    else:
        node("Identity", ["routed_tokens"], "expert_tokens")
        node("Mul", ["top_v", const("zero", np.array(0, np.float32))], "zeros")
        node("ReduceSum", ["zeros", sum_axes], "gate_mass", keepdims=0)
    last = "gate_mass"
    if heavy_matmuls:
        # Work that depends on the input (so it is not folded away) and changes nothing.
        node("ReduceMean", ["images"], "img_mean", keepdims=0)
        big = const("big", rng.normal(0, 0.05, (512, 512)).astype(np.float32))
        current = node("Add", [big, "img_mean"], "heavy_0")
        for i in range(heavy_matmuls):
            node("MatMul", [current, big], f"heavy_mm_{i}")
            current = node("Tanh", [f"heavy_mm_{i}"], f"heavy_{i + 1}")
        node("ReduceMean", [current], "heavy_mean", keepdims=0)
        node("Mul", ["heavy_mean", const("heavy_zero", np.array(0, np.float32))], "heavy_nil")
        last = node("Add", [last, "heavy_nil"], "gate_mass_heavy")
    if ballast_mb:
        ballast = rng.random(ballast_mb << 18, np.float32)  # (mb * 2**20 / 4,)
        node("Gather", [const("ballast", ballast), "stream_task"], "ballast_picked", axis=0)
        node("Mul", ["ballast_picked", const("ballast_zero", np.array(0, np.float32))], "b_nil")
        node("Unsqueeze", ["b_nil", const("b_axis", np.array([1], np.int64))], "b_nil2")  # (S, 1)
        last = node("Add", [last, "b_nil2"], "gate_mass_ballast")
    node("Identity", [last], "shared_gate_mass")

    def value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, shape)

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    outputs = [value(t, f32, [f"S_{t}", dataset.channels(t), size, size]) for t in tasks] + [
        value("expert_tokens", f32, ["S", layers, experts]),
        value("shared_gate_mass", f32, ["S", layers]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_ase",
        [
            value("images", f32, ["B", 3, size, size]),
            value("stream_image", i64, ["S"]),
            value("stream_task", i64, ["S"]),
        ],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    graph_file = path / GRAPH_FILES["dense"]
    graph_file.write_bytes(model.SerializeToString())
    write_metadata(path, fake_metadata(graph_file, tasks, experts, shared, k, layers, size, patch))
    return path


def fake_metadata(graph: Path, tasks, experts, shared, k, layers, size, patch) -> Metadata:
    """The metadata the exporter writes for a model of this shape (rank 4, synthetic data)."""
    routing = "ase" if shared else "moe"
    config = ModelConfig(
        backbone=BackboneConfig(image_size=size, patch_size=patch, depth=layers),
        adapters=AdapterConfig(spec=f"{experts}/{k}/{shared}/4", routing=routing),
        tasks=tasks,
    )
    return build_metadata(
        config,
        name="ase-fake",
        graphs={"dense": graph},
        provider_graph=dict.fromkeys(PROVIDERS, "dense"),
        precision="fp32",
        opset=OPSET,
        source=SourceInfo(),
        exporter={"onnx": onnx.__version__, "fake": "tests/server/fake_model.py"},
    )
