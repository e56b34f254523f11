"""Checkpoint -> model directory (docs/architecture.md, contract 3).

    python export/to_onnx.py ckpt.pt [-o DIR] [--dispatch auto|sparse|dense] [--fp16] [--int8]
                             [--plain] [--check]

Writes ``metadata.json`` and one graph per dispatch mode. ``auto`` writes both (``sparse``
only for variants with an expert bank) and records which graph each execution provider
should run: CUDA takes ``sparse``; the CPU takes ``dense`` when N*r <= d (the dense gated bank
is then the cheaper one: docs/architecture.md, "Expert dispatch"), ``sparse`` otherwise.

fp32 graphs are lean (``export/lean.py``: attention, GELU and router in fewer, fused
onnxruntime contrib-op nodes); ``--plain`` keeps to standard ONNX ops (other runtimes), and
``--fp16`` graphs are always plain (the contrib kernels used are fp32 on the CPU).
``--int8`` also writes ``model.int8.onnx``, the CPU graph dynamically quantised
(``export/quantize.py``), and maps the CPU provider to it.

Graphs need at least one stream (S >= 1): onnxruntime 1.31 dies with SIGFPE on S = 0.
Tasks with no streams are fine (their outputs are empty, their heads run on nothing).

Deterministic: the same checkpoint gives byte-identical files (no timestamps, no source paths
in the graphs, the version derived from the checkpoint's hash).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import TypedDict, Unpack

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx
import torch
from torch import Tensor, nn

from export import contract
from export.contract import GRAPH_FILES, GRAPH_INPUTS, PROVIDERS, SourceInfo
from export.dispatch import DISPATCH_MODES, export_module, keep_routers_fp32
from export.lean import make_lean
from export.metadata import build_metadata, output_names
from export.quantize import quantize_graph
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.heads import postprocess
from model.model import ASEModel
from model.tasks import TASKS

OPSET = 18
IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions for some graphs
DISPATCH_CHOICES = ("auto", *DISPATCH_MODES)


class GraphModule(nn.Module):
    """The export signature: tensors in, contract-3 outputs (a tuple, in contract order) out.

    ``half``: the network computes in fp16, while inputs, outputs and the per-kind
    post-processing stay fp32 (normalising a near-zero normal vector in fp16 loses it)."""

    def __init__(self, model: ASEModel, half: bool = False) -> None:
        super().__init__()
        self.model = keep_routers_fp32(model.half()) if half else model
        self.compute_dtype = torch.float16 if half else torch.float32
        self.kinds = [(task, TASKS[task].kind) for task in model.config.tasks]

    def forward(
        self, images: Tensor, stream_image: Tensor, stream_task: Tensor
    ) -> tuple[Tensor, ...]:
        out = self.model(images.to(self.compute_dtype), stream_image, stream_task)
        maps = (postprocess(kind, out.maps[task].float()) for task, kind in self.kinds)
        return (*maps, out.expert_tokens.float(), out.shared_gate_mass.float())


def example_inputs(config: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Tracing inputs: sizes >= 2 so neither dynamic axis is specialised to 0 or 1."""
    size = config.backbone.image_size
    images = torch.zeros(2, 3, size, size)
    stream_image = torch.tensor([0, 1, 1])
    stream_task = torch.zeros(3, dtype=torch.int64)
    return images, stream_image, stream_task


def trace_to_onnx(
    model: ASEModel, dispatch: str, half: bool = False, lean: bool = True
) -> onnx.ModelProto:
    """The dynamo export of ``model`` in ``dispatch`` form, dynamic in B and S; ``lean`` (fp32
    only) swaps in the fused export forms of ``export/lean.py``."""
    network = export_module(model, dispatch)
    if lean and not half:
        network = make_lean(network)
    module = GraphModule(network, half).eval()
    batch, streams = torch.export.Dim("B"), torch.export.Dim("S")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress chatter is not ours to show
        program = torch.onnx.export(
            module,
            example_inputs(model.config),
            dynamo=True,
            dynamic_shapes=({0: batch}, {0: streams}, {0: streams}),
            input_names=list(GRAPH_INPUTS),
            output_names=output_names(model.config),
            opset_version=OPSET,
            verbose=False,
        )
    return program.model_proto


def make_deterministic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what depends on where or when the export ran (stack traces, source paths)."""
    proto.ir_version = IR_VERSION
    proto.doc_string = ""
    proto.graph.doc_string = ""
    del proto.metadata_props[:]
    for graph in _graphs(proto.graph):
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info):
            del value.metadata_props[:]
        for tensor in graph.initializer:
            del tensor.metadata_props[:]
    for function in proto.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    return proto


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If/Loop bodies) inside it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def write_graph(
    model: ASEModel, dispatch: str, path: Path, fp16: bool = False, lean: bool = True
) -> Path:
    proto = make_deterministic(trace_to_onnx(model, dispatch, fp16, lean))
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def write_int8_graph(source: Path, path: Path) -> Path:
    """The dynamically quantised form of the fp32 graph ``source``, made deterministic."""
    quantize_graph(source, path)
    proto = make_deterministic(onnx.load(str(path)))
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def graph_modes(config: ModelConfig, dispatch: str) -> list[str]:
    """Graphs to write. ``auto``: dense always, sparse where there is an expert bank."""
    if dispatch not in DISPATCH_CHOICES:
        raise ValueError(f"unsupported dispatch {dispatch!r}; choose from {DISPATCH_CHOICES}")
    if dispatch == "sparse" and not config.adapters.has_experts:
        routing = config.adapters.routing
        raise ValueError(f"--dispatch sparse needs an expert bank; routing '{routing}' has none")
    if dispatch != "auto":
        return [dispatch]
    return ["dense", "sparse"] if config.adapters.has_experts else ["dense"]


def provider_graph(config: ModelConfig, modes: list[str]) -> dict[str, str]:
    """Which written graph each provider runs (see the module docstring for the rule)."""
    if len(modes) == 1:
        return dict.fromkeys(PROVIDERS, modes[0])
    adapters = config.adapters
    cpu = "dense" if adapters.experts * adapters.rank <= config.backbone.width else "sparse"
    return {"CUDAExecutionProvider": "sparse", "CPUExecutionProvider": cpu}


def check_options(fp16: bool, int8: bool) -> None:
    if fp16 and int8:
        raise ValueError("--int8 quantises an fp32 graph; it cannot be combined with --fp16")


def export_model_dir(
    model: ASEModel,
    out_dir: Path,
    *,
    dispatch: str = "auto",
    fp16: bool = False,
    int8: bool = False,
    lean: bool = True,
    name: str = "ase-model",
    source: SourceInfo | None = None,
) -> Path:
    """Write a model directory for ``model``; ``source`` describes its checkpoint (none: a
    model that was never saved). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    modes = graph_modes(model.config, dispatch)
    check_options(fp16, int8)
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs = {
        mode: write_graph(model, mode, out_dir / GRAPH_FILES[mode], fp16, lean) for mode in modes
    }
    providers = provider_graph(model.config, modes)
    quantized_from = providers["CPUExecutionProvider"] if int8 else None
    if quantized_from:  # the CPU's graph, quantised; the CPU then runs it
        graphs["int8"] = write_int8_graph(graphs[quantized_from], out_dir / GRAPH_FILES["int8"])
        providers["CPUExecutionProvider"] = "int8"
    for stale in set(GRAPH_FILES) - set(graphs):  # a previous export's other graphs
        (out_dir / GRAPH_FILES[stale]).unlink(missing_ok=True)
    metadata = build_metadata(
        model.config,
        name=name,
        graphs=graphs,
        provider_graph=providers,
        precision="fp16" if fp16 else "fp32",
        opset=OPSET,
        source=source or SourceInfo(),
        exporter={"torch": str(torch.__version__), "onnx": onnx.__version__},
        quantized_from=quantized_from,
    )
    contract.write_metadata(out_dir, metadata)
    return out_dir


class ExportOptions(TypedDict, total=False):
    """The options ``export_checkpoint`` passes on to ``export_model_dir`` (its defaults)."""

    dispatch: str
    fp16: bool
    int8: bool
    lean: bool
    name: str


def export_checkpoint(checkpoint: Path, out_dir: Path, **options: Unpack[ExportOptions]) -> Path:
    """Load a checkpoint (errors name the problem) and export it."""
    checkpoint = Path(checkpoint)
    # Bad options are rejected before the slow part (loading, then tracing).
    check_options(options.get("fp16", False), options.get("int8", False))
    model, payload = load_checkpoint(checkpoint)
    source = SourceInfo(
        checkpoint=checkpoint.name,
        checkpoint_sha256=contract.file_sha256(checkpoint),
        step=int(payload.get("step") or 0),
    )
    return export_model_dir(model, out_dir, source=source, **options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by model/train.py")
    parser.add_argument("-o", "--output", type=Path, default=None, help="model directory")
    parser.add_argument("--dispatch", choices=DISPATCH_CHOICES, default="auto")
    parser.add_argument("--fp16", action="store_true", help="fp16 weights and compute")
    parser.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx; the CPU runs it"
    )
    parser.add_argument(
        "--plain", action="store_true", help="standard ONNX ops only (no onnxruntime contrib ops)"
    )
    parser.add_argument("--check", action="store_true", help="verify against PyTorch eager")
    parser.add_argument("--name", default="ase-model", help="model name in metadata.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # optional-dependency chatter
    out_dir = args.output or args.checkpoint.parent / f"{args.checkpoint.stem}-onnx"
    try:
        export_checkpoint(
            args.checkpoint,
            out_dir,
            dispatch=args.dispatch,
            fp16=args.fp16,
            int8=args.int8,
            lean=not args.plain,
            name=args.name,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir}")
    if args.check:
        from export.check import check_model_dir

        report = check_model_dir(out_dir, args.checkpoint)
        print(report.summary())
        return 0 if report.passed else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
