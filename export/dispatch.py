"""Expert dispatch for export: the same adapter maths in two forms, chosen per graph.

- ``dense``: ``ASEModel.merge()``'s form as it is (``model.adapters.MergedExpertAdapter``):
  router weights (S, tokens, N) gate the rank blocks of the whole bank flattened into one pair,
  ``(u @ A_all) * gates @ B_all``, the S shared experts as its last S*r rank columns
  (``naive_shared``'s constant shared gates are 1 there). Cheapest on CPU when N*r <= d
  (docs/architecture.md, "Expert dispatch").
- ``sparse``: built here from that merged form. The routed experts go through
  ``com.microsoft.MoE`` (a real per-expert dispatch). ASE's one softmax over {k selected
  routed} + {S shared} is the op's own softmax with ``k+S`` picks, given logits where only
  those experts can win: unselected routed logits are set to ``NEG_LOGIT``, so the op's top-k
  (and its tie rule) cannot choose differently from our router. ``moe`` is the op with ``k``.
  ``naive_shared``'s shared experts have a constant weight 1, so they stay outside the op as
  one constant low-rank pair (the merged pair's last S*r columns).

Constant-weight adapters (backbone LoRA) are folded by ``ASEModel.merge()``; the ``lora``
variant's adapter stays one low-rank pair (2*r*d per token instead of the d*d of a folded map).
``SparseExpertDispatch`` computes the op's maths in torch when not exporting, so an eager run of
the export module is a real reference for ONNX Runtime.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.adapters import MergedExpertAdapter, route_fp32
from model.experts import unflatten_bank
from model.model import ASEModel, exporting
from model.routing import RouterOutput, TaskRouter, top_k_mask

DISPATCH_MODES = ("dense", "sparse")
NEG_LOGIT = -30000.0
"""Logit of an expert the op must not pick: far below any trained logit, exp() is exactly 0,
and still finite in fp16 (max 65504), so an fp16 graph sees the same value."""
CUDA_MIN_INNER = 16
"""The CUDA MoE kernel's smallest expert inner size (CUTLASS alignment: inner and hidden sizes
at least 16 and 128-bit aligned; docs/architecture.md, "Expert dispatch")."""


def padded_rank(rank: int, multiple: int = CUDA_MIN_INNER) -> int:
    """Rank rounded up to the CUDA kernel's granularity; zero columns leave outputs exact."""
    return -(-rank // multiple) * multiple


def keep_routers_fp32(model: nn.Module) -> nn.Module:
    """After ``model.half()``: put every router back to fp32 (see ``route_fp32``)."""
    for module in model.modules():
        if isinstance(module, TaskRouter):
            module.float()
    return model


def moe_op(x: Tensor, logits: Tensor, fc1: Tensor, fc2: Tensor, k: int) -> Tensor:
    """``com.microsoft.MoE`` with identity activation and normalised top-k weights.

    x (T, d), logits (T, E), fc1 (E, inner, d), fc2 (E, d, inner) -> (T, d). In export it is
    the contrib op; eagerly, the same maths (top-k, softmax over the picks, per-expert maps)."""
    if exporting():
        return torch.onnx.ops.symbolic(
            "com.microsoft::MoE",
            [x, logits, fc1, None, fc2],
            {"k": k, "activation_type": "identity", "normalize_routing_weights": 1},
            dtype=x.dtype,
            shape=x.shape,
            version=1,
        )
    picked = top_k_mask(logits, k)  # (T, E)
    weights = torch.softmax(logits.masked_fill(~picked, float("-inf")), dim=-1)  # (T, E)
    codes = torch.einsum("td,eid->tei", x, fc1)  # (T, E, inner)
    return torch.einsum("tei,te,edi->td", codes, weights, fc2)


class SparseExpertDispatch(nn.Module):
    """Router + ``com.microsoft.MoE`` over the experts the router may pick (ranks zero-padded
    to ``pad_to``); ``naive_shared``'s constant shared experts beside it as one dense pair."""

    def __init__(self, adapter: MergedExpertAdapter, pad_to: int = CUDA_MIN_INNER) -> None:
        super().__init__()
        self.router = adapter.router
        num, routed, rank = adapter.num_experts, adapter.num_routed, adapter.rank
        shared, in_softmax = num - routed, adapter.routing.shared_in_softmax
        self.joint_shared = in_softmax and shared > 0  # shared experts inside the op's softmax
        self.constant_shared = not in_softmax and shared > 0  # weight 1: a pair beside the op
        in_op = routed if self.constant_shared else num
        self.k = adapter.router.k + (shared if self.joint_shared else 0)
        A, B = unflatten_bank(adapter.A, adapter.B, num)  # (N, r, d), (N, d, r)
        extra = (padded_rank(rank, pad_to) if pad_to else rank) - rank
        self.register_buffer("fc1", nn.functional.pad(A[:in_op], (0, 0, 0, extra)).clone())
        self.register_buffer("fc2", nn.functional.pad(B[:in_op], (0, extra)).clone())
        if self.constant_shared:  # expert-major columns: the shared experts' are the last S*r
            self.register_buffer("shared_A", adapter.A[in_op * rank :].clone())  # (S*r, d)
            self.register_buffer("shared_B", adapter.B[:, in_op * rank :].clone())  # (d, S*r)

    def op_logits(self, routing: RouterOutput) -> Tensor:
        """(S, T, E) logits where only the experts our router chose can win the op's top-k."""
        chosen = routing.selected > 0
        routed = routing.routed_logits.masked_fill(~chosen, NEG_LOGIT)  # (S, T, N-S)
        if self.joint_shared:
            return torch.cat([routed, routing.shared_logits], dim=-1)  # (S, T, N)
        return routed  # (S, T, N-S)

    def forward(self, u: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = route_fp32(self.router, u, stream_task)
        logits = self.op_logits(routing).to(u.dtype)
        tokens = u.flatten(0, -2)  # (S*T, d)
        out = moe_op(tokens, logits.flatten(0, -2), self.fc1, self.fc2, self.k)  # (S*T, d)
        out = out.unflatten(0, u.shape[:-1])  # (S, T, d)
        if self.constant_shared:
            out = out + (u @ self.shared_A.T) @ self.shared_B.T
        return out, routing


def export_module(model: ASEModel, dispatch: str, pad_to: int = CUDA_MIN_INNER) -> ASEModel:
    """``model.merge()`` (``model`` unchanged), as it is for ``dense``; for ``sparse`` with each
    merged expert adapter in its sparse dispatch form."""
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"unknown dispatch {dispatch!r}; known: {', '.join(DISPATCH_MODES)}")
    if dispatch == "sparse" and not model.config.adapters.has_experts:
        routing = model.config.adapters.routing
        raise ValueError(f"sparse dispatch needs an expert bank; routing '{routing}' has none")
    merged = model.eval().merge()
    if dispatch == "sparse":
        for block in merged.backbone.blocks:
            if isinstance(getattr(block, "adapter", None), MergedExpertAdapter):
                block.adapter = SparseExpertDispatch(block.adapter, pad_to)
    return merged
