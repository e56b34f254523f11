"""Lean export forms of the network: the same maths as ``model/``, written so that the ONNX
graph has fewer, fused nodes on ONNX Runtime's CPU provider (the fp32 default; ``--plain``
turns it off).

Why: at serving sizes (64-196 tokens per stream) the plain graph has ~700 nodes and spends a
large share of its time between GEMMs (docs/benchmarks.md, "# Model benchmarks").

- ``LeanAttention``: QKV projection + attention as one ``com.microsoft.Attention`` node
  (instead of ~25: linear, reshapes, transposes, slices, scaled matmuls, softmax).
- ``LeanMlp``: fc1's bias and the erf GELU as one ``com.microsoft.BiasGelu`` node.
  (Not used: ``com.microsoft.SkipLayerNormalization`` for residual + LN2; onnxruntime 1.31's
  CPU kernel took 0.83 ms where Add, Add, LayerNormalization took 0.24 ms, at (5, 196, 384).)
- ``LeanRouter``: every task's routed and shared router weights in one (tasks, d, E) tensor,
  one batched MatMul instead of two Einsums; the top-k mask from TopK's indices (ONNX TopK
  breaks ties towards the lower index, the rule ``top_k_mask`` implements by hand).
- ``LeanHead``: the per-level 1x1 projections as one MatMul over the levels concatenated
  (sum of convolutions = one GEMM with the weights side by side); GELU as ``com.microsoft.Gelu``.

fp32 only: ONNX Runtime's CPU kernels of these contrib ops are float32. Each module computes
the op's maths in torch when not exporting, so an eager run of the export module stays a
reference for ONNX Runtime (as in ``dispatch.py``); ``export/check.py`` compares the graph with
the unmerged checkpoint model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import DenseHead, decode
from model.model import ASEModel, exporting
from model.routing import RouterOutput, TaskRouter, top_k_mask
from model.vit import Attention, Mlp


def _contrib(op: str, inputs: list[Tensor], like: Tensor, **attributes) -> Tensor:
    """One ``com.microsoft`` node whose single output has ``like``'s dtype and shape."""
    return torch.onnx.ops.symbolic(
        f"com.microsoft::{op}", inputs, attributes, dtype=like.dtype, shape=like.shape, version=1
    )


class LeanGelu(nn.Module):
    """Exact (erf) GELU as one ``com.microsoft.Gelu`` node (five nodes as exported)."""

    def forward(self, x: Tensor) -> Tensor:
        return _contrib("Gelu", [x], x) if exporting() else F.gelu(x)


class LeanAttention(nn.Module):
    """A merged ``Attention`` with QKV projection and attention in ``com.microsoft.Attention``:
    input (S, T, d), QKV weight (d, 3d) with Q, K, V column blocks (heads contiguous inside
    each, as the rows of ``nn.Linear``), scale 1/sqrt(d_head) by default, as SDPA's."""

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.heads = attention.heads
        qkv, proj = attention.qkv, attention.proj
        self.register_buffer("qkv_weight", qkv.weight.detach().T.contiguous())  # (d, 3d)
        self.register_buffer("qkv_bias", qkv.bias.detach().clone())  # (3d,)
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        if exporting():
            out = _contrib(
                "Attention", [x, self.qkv_weight, self.qkv_bias], x, num_heads=self.heads
            )
        else:
            out = self._reference(x)
        return self.proj(out)  # (S, T, d)

    def _reference(self, x: Tensor) -> Tensor:
        streams, tokens, dim = x.shape
        qkv = x @ self.qkv_weight + self.qkv_bias  # (S, T, 3d)
        qkv = qkv.reshape(streams, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (S, heads, T, d_head)
        out = F.scaled_dot_product_attention(q, k, v)  # (S, heads, T, d_head)
        return out.transpose(1, 2).reshape(streams, tokens, dim)  # (S, T, d)


class LeanMlp(nn.Module):
    """The FFN with fc1's bias add and the erf GELU fused into ``com.microsoft.BiasGelu``."""

    def __init__(self, mlp: Mlp) -> None:
        super().__init__()
        self.register_buffer("fc1_weight", mlp.fc1.weight.detach().T.contiguous())  # (d, 4d)
        self.register_buffer("fc1_bias", mlp.fc1.bias.detach().clone())  # (4d,)
        self.fc2 = mlp.fc2

    def forward(self, x: Tensor) -> Tensor:
        hidden = x @ self.fc1_weight  # (S, T, 4d)
        if exporting():
            hidden = _contrib("BiasGelu", [hidden, self.fc1_bias], hidden)
        else:
            hidden = F.gelu(hidden + self.fc1_bias)
        return self.fc2(hidden)


class LeanRouter(nn.Module):
    """``TaskRouter`` with one batched MatMul for routed and shared logits and the top-k mask
    from TopK's indices; its gate is the router's own (``routing.masked_gate``)."""

    def __init__(self, router: TaskRouter) -> None:
        super().__init__()
        self.k, self.shared = router.k, router.shared
        self.routed = router.routed_weight.shape[1]
        self.learns_shared = router.shared_weight is not None
        weights = [router.routed_weight] + ([router.shared_weight] if self.learns_shared else [])
        joint = torch.cat([w.detach() for w in weights], dim=1)  # (tasks, E, d)
        self.register_buffer("weight", joint.transpose(1, 2).contiguous())  # (tasks, d, E)
        self.gate = router.gate

    def forward(self, u: Tensor, stream_task: Tensor) -> RouterOutput:
        """u (S, tokens, d), stream_task (S,) local task slots."""
        logits = u @ self.weight.index_select(0, stream_task)  # (S, tokens, E)
        z_routed = logits[..., : self.routed]  # (S, tokens, N-S)
        if self.learns_shared:  # structural, fixed at construction
            z_shared = logits[..., self.routed :]  # (S, tokens, S_shared)
        else:
            z_shared = u.new_zeros(*u.shape[:-1], self.shared)
        selected = self._top_k(z_routed)  # (S, tokens, N-S) bool
        weights = self.gate(z_routed, selected, z_shared)  # (S, tokens, N)
        probs = torch.softmax(z_routed, dim=-1)  # training losses only: pruned from the graph
        return RouterOutput(weights, probs, selected.to(u.dtype), z_routed, z_shared)

    def _top_k(self, z_routed: Tensor) -> Tensor:
        if not exporting() or self.k == 0:
            return top_k_mask(z_routed, self.k)
        index = torch.topk(z_routed, self.k, dim=-1).indices  # (S, tokens, k)
        picked = torch.ones_like(index, dtype=torch.bool)
        return torch.zeros_like(z_routed, dtype=torch.bool).scatter(-1, index, picked)


class LeanHead(nn.Module):
    """A ``DenseHead`` whose level projections are one MatMul over the concatenated levels."""

    def __init__(self, head: DenseHead) -> None:
        super().__init__()
        self.grid = head.grid
        weights = [conv.weight.detach().flatten(1) for conv in head.project]  # (hidden, d) each
        self.register_buffer("project_weight", torch.cat(weights, 1).T.contiguous())  # (L*d, h)
        biases = torch.stack([conv.bias.detach() for conv in head.project])  # (L, hidden)
        self.register_buffer("project_bias", biases.sum(0))  # (hidden,)
        self.fuse, self.refine = _lean_gelu(head.fuse), _lean_gelu(head.refine)
        self.detail = head.detail
        if self.detail is not None:
            self.detail.refine = nn.ModuleList(_lean_gelu(b) for b in self.detail.refine)
        self.classify = head.classify

    def forward(
        self,
        features: list[Tensor],
        streams: Tensor,
        size: tuple[int, int],
        detail: list[Tensor] | None = None,
        stream_image: Tensor | None = None,
    ) -> Tensor:
        """As ``DenseHead.forward``: features per level (S, grid*grid, d) -> (S_t, C, H, W)."""
        # every head concatenates the same levels: the exported graph keeps one Concat (checked)
        tokens = torch.cat(features, dim=-1).index_select(0, streams)  # (S_t, T, L*d)
        x = tokens @ self.project_weight + self.project_bias  # (S_t, T, hidden)
        x = x.transpose(1, 2).unflatten(-1, (self.grid, self.grid))  # (S_t, hidden, g, g)
        return decode(self, self.fuse(x), streams, size, detail, stream_image)


def _lean_gelu(block: nn.Sequential) -> nn.Sequential:
    """A head's conv -> ChannelNorm -> GELU block with the GELU as one node."""
    return nn.Sequential(*(LeanGelu() if isinstance(m, nn.GELU) else m for m in block))


def make_lean(model: ASEModel) -> ASEModel:
    """Swap blocks, routers and heads of an export module (``dispatch.export_module``'s result:
    merged, adapters in their dense or sparse form) for their lean forms, in place; returns
    ``model``."""
    for block in model.backbone.blocks:
        adapter = getattr(block, "adapter", None)
        if isinstance(getattr(adapter, "router", None), TaskRouter):
            adapter.router = LeanRouter(adapter.router)
        block.attn, block.mlp = LeanAttention(block.attn), LeanMlp(block.mlp)
    for task, head in model.heads.items():
        model.heads[task] = LeanHead(head)
    return model
