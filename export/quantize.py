"""int8 variant of an exported fp32 graph: onnxruntime's dynamic quantisation.

What is quantised: the MatMuls with a constant weight (backbone projections, FFN, head
projections, the dense expert bank) and ``com.microsoft.Attention`` (to ``QAttention``):
int8 weights, per output channel, in 7 bits (``reduce_range``); activations are quantised to
uint8 per tensor at run time. onnxruntime runs these as u8s8 integer GEMMs: VNNI / AMX where
the CPU has them, else AVX2's ``vpmaddubsw``, whose 16-bit sums of two u8 x s8 products
saturate with 8-bit weights (a demo-size test model's labels agreed with fp32 on only 92.7%
of pixels on an AVX2-only CPU); with 7-bit weights every such sum fits, so one file is right
on any x86 CPU.

What stays fp32: routers (their MatMul multiplies by per-stream gathered weights, not a
constant, so ``MatMulConstBOnly`` leaves it), top-k, softmax, layer norms, GELU, the heads'
3x3 convolutions (``ConvInteger`` measured slower than the fp32 NCHWc convolution here) and the
post-processing. The accuracy cost is measured, not assumed (``bench/int8_accuracy.py``,
docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

QUANTIZED_OPS = ("MatMul", "Attention")


def quantize_graph(source: Path, target: Path) -> Path:
    """Write the dynamic int8 form of the fp32 graph ``source`` to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantizer_log = logging.getLogger()  # the quantizer warns on the root logger
    level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)  # its "consider pre-processing" advice is for CNNs
    try:
        quantize_dynamic(
            Path(source),
            Path(target),
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=True,  # 7-bit weights: no u8s8 saturation on CPUs without VNNI
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        quantizer_log.setLevel(level)
    return Path(target)


def quantized_node_count(path: Path) -> int:
    """Integer nodes in a graph (for tests: an int8 graph must really hold some)."""
    integer_ops = {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    return sum(node.op_type in integer_ops for node in onnx.load(str(path)).graph.node)
