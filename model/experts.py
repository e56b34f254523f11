"""Low-rank expert compute: the gated expert bank (and the one flat pair it computes with),
the single low-rank adapter, and LoRA on frozen linear layers.

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


def flatten_bank(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """A bank A (N, r, d), B (N, d, r) -> one low-rank pair A (N*r, d), B (d, N*r), expert-major:
    expert i owns rank columns ``i*r .. (i+1)*r - 1``, so any run of experts is a run of columns."""
    num, rank, dim = A.shape
    return A.reshape(num * rank, dim), B.permute(1, 0, 2).reshape(dim, num * rank)


def unflatten_bank(a_flat: Tensor, b_flat: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """``flatten_bank``'s inverse: A (N*r, d), B (d, N*r) -> A (N, r, d), B (N, d, r)."""
    dim = a_flat.shape[-1]
    return a_flat.reshape(num, -1, dim), b_flat.reshape(dim, num, -1).permute(1, 0, 2)


def gated_low_rank(u: Tensor, a_flat: Tensor, b_flat: Tensor, gates: Tensor) -> Tensor:
    """``sum_i g_i B_i A_i u`` on a flattened bank: ``u @ A_all`` gives every expert's r-dim code
    at once, each rank block is scaled by its gate (0 for unselected experts), then ``@ B_all``.
    u (..., d), a_flat (N*r, d), b_flat (d, N*r), gates (..., N) -> (..., d)."""
    num = gates.shape[-1]
    codes = (u @ a_flat.T).unflatten(-1, (num, a_flat.shape[0] // num))  # (..., N, r)
    gated = (codes * gates.unsqueeze(-1)).flatten(-2)  # (..., N*r)
    return gated @ b_flat.T  # (..., d)


class LowRankExperts(nn.Module):
    """A bank of N low-rank experts ``y = sum_i g_i B_i A_i u``, A (N, r, d), B (N, d, r).

    Computed densely (``gated_low_rank``). When N*r <= d this is cheaper on CPU than any sparse
    dispatch (docs/architecture.md, "Expert dispatch").
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
        return gated_low_rank(u, *flatten_bank(self.A, self.B), gates)


class LowRankAdapter(nn.Module):
    """One task-agnostic low-rank adapter ``B A u`` (the MTL-ViT+LoRA baseline's FFN-side
    adapter, rank (k+S)*r so its active rank matches the expert configs)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(_lora_a_init((rank, dim), dim))
        self.B = nn.Parameter(torch.zeros(dim, rank))

    def forward(self, u: Tensor) -> Tensor:
        return (u @ self.A.T) @ self.B.T


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
