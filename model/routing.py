"""Routers: token features -> dense expert weights. Kept apart from expert compute
(``experts.py``) so that the same weights drive the dense bank, the sparse ONNX dispatch and
the router statistics.

Weights are always dense ``[..., N]`` with the routed experts first (``0 .. N-S-1``) and the
shared experts last (``N-S .. N-1``); unselected routed experts weigh exactly 0.

Tie-breaking: among equal routed logits the *lowest expert index* wins (ONNX TopK's rule).
``torch.topk`` on CPU does not follow it (checked with torch 2.13: ``topk([1, 3, 3, 0, 3], 2)``
picks 2 and 4), so ``top_k_mask`` breaks ties explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import Routing


def top_k_mask(logits: Tensor, k: int) -> Tensor:
    """Boolean mask of the k largest logits on the last axis; ties go to the lowest index.

    Only the *value* of the k-th largest logit is taken from ``topk`` (values do not depend on
    how ties are broken); every logit above it is in, and of those equal to it the first few
    by index fill the remaining places. Plain TopK/compare/CumSum ops: exportable to ONNX
    (``aten.sort`` with ``stable=True`` is not) and identical in torch and ONNX Runtime.
    """
    if k == 0:  # structural (k is fixed by the config): only shared experts are active
        return torch.zeros_like(logits, dtype=torch.bool)
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) k-th largest value
    above, tied = logits > kth, logits == kth
    room = k - above.sum(dim=-1, keepdim=True)  # (..., 1) places left for tied logits
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def _masked_routed_logits(z_routed: Tensor, selected: Tensor) -> Tensor:
    """Routed logits with every unselected expert at -inf, so a softmax gives it exactly 0."""
    return z_routed.masked_fill(~selected, float("-inf"))


def _ase_weights(z_routed: Tensor, selected: Tensor, z_shared: Tensor) -> Tensor:
    joint = torch.cat([_masked_routed_logits(z_routed, selected), z_shared], dim=-1)  # (..., N)
    return torch.softmax(joint, dim=-1)


def _naive_shared_weights(z_routed: Tensor, selected: Tensor, z_shared: Tensor) -> Tensor:
    routed = torch.softmax(_masked_routed_logits(z_routed, selected), dim=-1)  # (..., N-S)
    return torch.cat([routed, torch.ones_like(z_shared)], dim=-1)  # (..., N)


def ase_gate(z_routed: Tensor, z_shared: Tensor, k: int) -> Tensor:
    """ASE gating: top-k of the routed logits, then ONE softmax over the k selected routed
    logits together with all S shared logits. The k+S active weights sum to 1; with S=0 this
    is plain top-k softmax (the ``moe`` variant)."""
    return _ase_weights(z_routed, top_k_mask(z_routed, k), z_shared)


def moe_gate(z_routed: Tensor, z_shared: Tensor, k: int) -> Tensor:
    """Plain top-k LoRA-MoE: ``ase_gate`` with no shared experts (``z_shared`` has width 0)."""
    return ase_gate(z_routed, z_shared, k)


def naive_shared_gate(z_routed: Tensor, z_shared: Tensor, k: int) -> Tensor:
    """Naive shared experts: routed weights are a softmax over the selected k among themselves;
    every shared expert weighs exactly 1. Only the width of ``z_shared`` is used."""
    return _naive_shared_weights(z_routed, top_k_mask(z_routed, k), z_shared)


MaskedGate = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(routed logits, top-k mask, shared logits) -> weights: the gates above after selection,
so that a router selects once and reuses the mask for its statistics."""


def masked_gate(routing: Routing) -> MaskedGate:
    """The variant's gate after selection: one softmax over the picks and the shared logits
    (``ase``, and ``moe``, which has no shared experts), or a softmax over the picks beside
    shared experts of constant weight 1 (``naive_shared``)."""
    return _ase_weights if routing.shared_in_softmax else _naive_shared_weights


def task_logits(u: Tensor, weight: Tensor, stream_task: Tensor) -> Tensor:
    """Each stream's tokens through its own task's router: u (S, tokens, d), weight (T, E, d),
    stream_task (S,) local task slots -> logits (S, tokens, E)."""
    per_stream = weight.index_select(0, stream_task)  # (S, E, d)
    return torch.einsum("snd,sed->sne", u, per_stream)


@dataclass
class RouterOutput:
    weights: Tensor  # (S, tokens, N) dense gate weights, routed first then shared
    routed_probs: Tensor  # (S, tokens, N-S) softmax over all routed logits, for aux losses
    selected: Tensor  # (S, tokens, N-S) float 1.0 where a routed expert was picked
    routed_logits: Tensor  # (S, tokens, N-S) raw, for a sparse dispatch (com.microsoft.MoE)
    shared_logits: Tensor  # (S, tokens, S) raw; zeros where shared weights are constant

    def expert_tokens(self) -> Tensor:
        """(S, N) tokens each expert processed: picked routed experts, every shared expert."""
        tokens = self.selected.shape[1]
        shared = self.weights.shape[-1] - self.selected.shape[-1]
        routed = self.selected.sum(dim=1)  # (S, N-S)
        return torch.cat([routed, routed.new_full((routed.shape[0], shared), tokens)], dim=-1)

    def shared_gate_mass(self) -> Tensor:
        """(S,) summed gate weight of the shared experts over the stream's tokens."""
        return self.weights[..., self.selected.shape[-1] :].sum(dim=(1, 2))


class TaskRouter(nn.Module):
    """Per-task routers of one layer. Routed logits come from a (T, N-S, d) weight; shared
    logits from a (T, S, d) weight for ``ase`` only: ``moe`` has no shared experts and
    ``naive_shared`` gives them a constant weight 1, so a shared router would be dead weight."""

    def __init__(
        self, num_tasks: int, dim: int, routed: int, shared: int, k: int, variant: Routing
    ) -> None:
        super().__init__()
        if not variant.has_experts:
            raise ValueError(f"routing variant '{variant}' has no expert bank to route to")
        self.k, self.shared = k, shared
        # Small init: near-uniform routing at the start, as in switch-style routers.
        self.routed_weight = nn.Parameter(torch.randn(num_tasks, routed, dim) * dim**-0.5 * 0.1)
        learns_shared = variant.learns_shared_gates and shared > 0
        self.shared_weight = (
            nn.Parameter(torch.randn(num_tasks, shared, dim) * dim**-0.5 * 0.1)
            if learns_shared
            else None
        )
        self.gate = masked_gate(variant)

    def forward(self, u: Tensor, stream_task: Tensor) -> RouterOutput:
        """u (S, tokens, d), stream_task (S,) local task slots."""
        z_routed = task_logits(u, self.routed_weight, stream_task)  # (S, tokens, N-S)
        selected = top_k_mask(z_routed, self.k)  # (S, tokens, N-S) bool
        z_shared = self._shared_logits(u, stream_task)  # (S, tokens, S_shared)
        weights = self.gate(z_routed, selected, z_shared)  # (S, tokens, N)
        # Statistics count the selection, not weights > 0: a picked expert whose weight
        # underflows to 0 was still dispatched (the sparse graph processes it).
        probs = torch.softmax(z_routed, dim=-1)
        return RouterOutput(weights, probs, selected.to(u.dtype), z_routed, z_shared)

    def _shared_logits(self, u: Tensor, stream_task: Tensor) -> Tensor:
        if self.shared_weight is None:  # structural (fixed at construction), not data-dependent
            return u.new_zeros(*u.shape[:-1], self.shared)  # (S, tokens, S_shared)
        return task_logits(u, self.shared_weight, stream_task)
