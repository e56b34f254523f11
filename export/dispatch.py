"""Expert dispatch for export: the same adapter maths in two forms, chosen per graph.

- ``dense``: router weights (S, tokens, N) gate the whole bank's rank blocks, one matmul pair
  ``(u @ A_all) * gates @ B_all``. The S shared experts sit in that pair as its last S*r rank
  columns (the fused rank-S*r pair of design.md 1, concatenated to the routed bank so one GEMM
  does both); ``naive_shared``'s constant shared gates are 1 there. Cheapest on CPU when
  N*r <= d (design.md 2).
- ``sparse``: the routed experts go through ``com.microsoft.MoE`` (a real per-expert
  dispatch). ASE's one softmax over {k selected routed} + {S shared} is the op's own softmax
  with ``k+S`` picks, given logits where only those experts can win: unselected routed logits
  are set to ``NEG_LOGIT``, so the op's top-k (and its tie rule) cannot choose differently
  from our router. ``moe`` is the op with ``k``. ``naive_shared``'s shared experts have a
  constant weight 1, so they stay outside the op as one constant low-rank pair.

Constant-weight adapters (backbone LoRA) are folded by ``ASEModel.merge()``; the ``lora``
variant's adapter stays one low-rank pair (2*r*d per token instead of the d*d of a folded map).
Each dispatch module computes the op's maths in torch when not exporting, so an eager run of
the export module is a real reference for ONNX Runtime.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from model.adapters import ExpertAdapter
from model.experts import LowRankAdapter
from model.model import ASEModel
from model.routing import RouterOutput, TaskRouter, top_k_mask

DISPATCH_MODES = ("dense", "sparse")
NEG_LOGIT = -30000.0
"""Logit of an expert the op must not pick: far below any trained logit, exp() is exactly 0,
and still finite in fp16 (max 65504), so an fp16 graph sees the same value."""
CUDA_MIN_INNER = 16
"""The CUDA MoE kernel's smallest expert inner size (CUTLASS alignment, design.md 2)."""


def padded_rank(rank: int, multiple: int = CUDA_MIN_INNER) -> int:
    """Rank rounded up to the CUDA kernel's granularity; zero columns leave outputs exact."""
    return -(-rank // multiple) * multiple


def _pair(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Bank A (N, r, d), B (N, d, r) -> one pair A (N*r, d), B (d, N*r), expert-major."""
    num, rank, dim = A.shape
    return A.reshape(num * rank, dim), B.permute(1, 0, 2).reshape(dim, num * rank)


class DenseExpertDispatch(nn.Module):
    """Router + the whole bank as one gated low-rank pair (plain MatMul/Mul in ONNX)."""

    def __init__(self, adapter: ExpertAdapter) -> None:
        super().__init__()
        self.router = adapter.router
        num, rank, _ = adapter.experts.A.shape
        self.num_experts, self.rank = num, rank
        a_all, b_all = _pair(adapter.experts.A.detach(), adapter.experts.B.detach())
        self.register_buffer("A", a_all.clone())  # (N*r, d)
        self.register_buffer("B", b_all.clone())  # (d, N*r)

    def forward(self, u: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = route_fp32(self.router, u, stream_task)
        codes = (u @ self.A.T).unflatten(-1, (self.num_experts, self.rank))  # (S, T, N, r)
        gates = routing.weights.to(u.dtype).unsqueeze(-1)  # (S, T, N, 1)
        gated = (codes * gates).flatten(-2)  # (S, T, N*r)
        return gated @ self.B.T, routing


def route_fp32(router: TaskRouter, u: Tensor, stream_task: Tensor) -> RouterOutput:
    """Routers always run in fp32, also in an fp16 graph: the top-k selection and the router
    statistics then match the fp32 reference far more often (and onnxruntime 1.31's CPU
    fp16 path selected fewer than k experts per token in our top-k mask: checked)."""
    return router(u.float(), stream_task)


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
    if torch.onnx.is_in_onnx_export():
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

    def __init__(self, adapter: ExpertAdapter, pad_to: int = CUDA_MIN_INNER) -> None:
        super().__init__()
        self.router = adapter.router
        A, B = adapter.experts.A.detach(), adapter.experts.B.detach()  # (N, r, d), (N, d, r)
        routed = adapter.router.routed_weight.shape[1]
        self.joint_shared = adapter.routing == "ase"  # shared experts inside the op's softmax
        in_op = A.shape[0] if adapter.routing != "naive_shared" else routed
        self.k = adapter.router.k + (A.shape[0] - routed if self.joint_shared else 0)
        inner = padded_rank(A.shape[1], pad_to) if pad_to else A.shape[1]
        extra = inner - A.shape[1]
        self.register_buffer("fc1", nn.functional.pad(A[:in_op], (0, 0, 0, extra)).clone())
        self.register_buffer("fc2", nn.functional.pad(B[:in_op], (0, extra)).clone())
        self.constant_shared = in_op < A.shape[0]
        if self.constant_shared:
            shared_a, shared_b = _pair(A[in_op:], B[in_op:])
            self.register_buffer("shared_A", shared_a.clone())  # (S*r, d)
            self.register_buffer("shared_B", shared_b.clone())  # (d, S*r)

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
    """The merged model with each block's adapter in its export form (``model`` unchanged).

    ``merge()`` folds the backbone LoRA; the adapters are rebuilt here from the unmerged ones,
    whose factors the merged constant maps no longer keep."""
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"unknown dispatch {dispatch!r}; known: {', '.join(DISPATCH_MODES)}")
    if dispatch == "sparse" and not model.config.adapters.has_experts:
        routing = model.config.adapters.routing
        raise ValueError(f"sparse dispatch needs an expert bank; routing {routing!r} has none")
    merged = model.eval().merge()
    for source, target in zip(model.backbone.blocks, merged.backbone.blocks, strict=True):
        adapter = getattr(source, "adapter", None)
        if isinstance(adapter, ExpertAdapter):
            adapter = copy.deepcopy(adapter)
            target.adapter = (
                DenseExpertDispatch(adapter)
                if dispatch == "dense"
                else SparseExpertDispatch(adapter, pad_to)
            )
        elif isinstance(adapter, LowRankAdapter):
            target.adapter = copy.deepcopy(adapter)
    return merged.requires_grad_(False)
