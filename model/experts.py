"""Low-rank expert compute: the gated expert bank, the fused shared experts, LoRA on frozen
linear layers, and the frozen maps that constant adapters fold into when merged.

No routing happens here: gates arrive as dense weights from ``routing.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _lora_a_init(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """A matrices: uniform with kaiming bound for a=sqrt(5) (nn.Linear's default, as LoRA)."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


class LowRankExperts(nn.Module):
    """A bank of N low-rank experts ``y = sum_i g_i B_i A_i u``, A (N, r, d), B (N, d, r).

    Computed densely: ``u @ A_all`` gives every expert's r-dim code at once (tokens, N*r); each
    rank block is scaled by its gate (0 for unselected experts), then ``@ B_all``. When
    N*r <= d this is cheaper on CPU than any sparse dispatch (design.md section 2).
    B starts at zero (LoRA convention): an untrained bank is a no-op, the model equals its
    frozen backbone, and gradients still reach B at once (and A as soon as B moves).
    """

    def __init__(self, num_experts: int, dim: int, rank: int) -> None:
        super().__init__()
        self.num_experts, self.rank = num_experts, rank
        self.A = nn.Parameter(_lora_a_init((num_experts, rank, dim), dim))
        self.B = nn.Parameter(torch.zeros(num_experts, dim, rank))

    def forward(self, u: Tensor, gates: Tensor) -> Tensor:
        """u (..., d), gates (..., N) -> (..., d)."""
        dim = u.shape[-1]
        a_all = self.A.reshape(self.num_experts * self.rank, dim)  # (N*r, d)
        b_all = self.B.permute(1, 0, 2).reshape(dim, self.num_experts * self.rank)  # (d, N*r)
        codes = (u @ a_all.T).unflatten(-1, (self.num_experts, self.rank))  # (..., N, r)
        gated = (codes * gates.unsqueeze(-1)).flatten(-2)  # (..., N*r)
        return gated @ b_all.T  # (..., d)

    def slice(self, start: int, stop: int) -> LowRankExperts:
        """A new bank holding experts ``start .. stop-1`` (copied weights)."""
        part = LowRankExperts(stop - start, self.A.shape[-1], self.rank)
        part.A.data.copy_(self.A.data[start:stop])
        part.B.data.copy_(self.B.data[start:stop])
        return part

    def summed_map(self) -> Tensor:
        """(d, d) matrix ``sum_i B_i A_i``: the bank with every gate fixed at 1."""
        return torch.einsum("ndr,nre->de", self.B, self.A)


class FusedSharedExperts(nn.Module):
    """S shared experts fused into ONE low-rank pair of rank S*r, A (S*r, d), B (d, S*r);
    each expert's gate scales its own rank block. Exactly equal to the S experts of the bank,
    but a single pair of matmuls that export can keep dense beside a sparse routed dispatch."""

    def __init__(self, experts: LowRankExperts) -> None:
        super().__init__()
        num, rank, dim = experts.A.shape
        self.rank = rank
        self.A = nn.Parameter(experts.A.detach().reshape(num * rank, dim).clone())  # (S*r, d)
        b = experts.B.detach().permute(1, 0, 2).reshape(dim, num * rank)  # (d, S*r)
        self.B = nn.Parameter(b.clone())

    def forward(self, u: Tensor, gates: Tensor) -> Tensor:
        """u (..., d), gates (..., S) -> (..., d)."""
        block_gates = gates.repeat_interleave(self.rank, dim=-1)  # (..., S*r)
        return ((u @ self.A.T) * block_gates) @ self.B.T


class FrozenMap(nn.Module):
    """A constant linear map folded from adapters with fixed weight (merged inference only).
    Ignores gates: kept call-compatible with the gated banks."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(matrix.detach().clone(), requires_grad=False)  # (d_out, d_in)

    def forward(self, u: Tensor, gates: Tensor | None = None) -> Tensor:
        return u @ self.weight.T


class LowRankAdapter(nn.Module):
    """One task-agnostic low-rank adapter ``B A u`` (the MTL-ViT+LoRA baseline's FFN-side
    adapter, rank (k+S)*r so its active rank matches the expert configs)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(_lora_a_init((rank, dim), dim))
        self.B = nn.Parameter(torch.zeros(dim, rank))

    def forward(self, u: Tensor) -> Tensor:
        return (u @ self.A.T) @ self.B.T

    def merged(self) -> FrozenMap:
        return FrozenMap(self.B @ self.A)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update scaled by alpha/r."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRALinear needs rank >= 1, got {rank}; use frozen_linear()")
        self.base = frozen_linear(in_features, out_features, 0)
        self.scale = (alpha if alpha is not None else rank) / rank
        self.A = nn.Parameter(_lora_a_init((rank, in_features), in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        code = (x @ self.A.T) * self.scale  # (..., r): scale the small tensor, not the output
        out = torch.addmm(self.base(x).flatten(0, -2), code.flatten(0, -2), self.B.T)  # fused add
        return out.unflatten(0, x.shape[:-1])  # (..., out)

    def merge(self) -> nn.Linear:
        """A frozen ``nn.Linear`` with the update folded in: W + scale * B A."""
        merged = frozen_linear(self.base.in_features, self.base.out_features, 0)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scale * (self.B @ self.A))
            merged.bias.copy_(self.base.bias)
        return merged


def frozen_linear(in_features: int, out_features: int, lora_rank: int) -> nn.Module:
    """The backbone's linear layer: a frozen ``nn.Linear``, with a LoRA beside it if rank > 0.
    The choice is made here, once, never inside ``forward``."""
    if lora_rank > 0:
        return LoRALinear(in_features, out_features, lora_rank)
    linear = nn.Linear(in_features, out_features)
    linear.requires_grad_(False)
    return linear


def merge_linear(module: nn.Module) -> nn.Module:
    """Fold a LoRA into its base weight; a plain linear is returned as it is."""
    return module.merge() if isinstance(module, LoRALinear) else module
