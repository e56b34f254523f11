"""The adapter beside each block's FFN (``h' = h + FFN(u) + Adapter(u)``, u = LN2(h)), one
class per routing variant, chosen once by ``build_adapter``; and their merged forms.

- ``ase``/``moe``/``naive_shared``: ``ExpertAdapter`` = per-task router + one bank of N experts.
- ``lora``: ``LowRankAdapter`` of rank (k+S)*r, task-agnostic, no routing.
- ``none``: no adapter at all (the block class has none; see ``vit.py``).
"""

from __future__ import annotations

from torch import Tensor, nn

from model.config import AdapterConfig
from model.experts import FrozenMap, FusedSharedExperts, LowRankAdapter, LowRankExperts
from model.routing import RouterOutput, TaskRouter


class ExpertAdapter(nn.Module):
    """Router + expert bank of one layer; returns the adapter output and the routing."""

    def __init__(self, config: AdapterConfig, dim: int, num_tasks: int) -> None:
        super().__init__()
        self.routing = config.routing
        self.router = TaskRouter(
            num_tasks, dim, config.routed, config.shared, config.k, config.routing
        )
        self.experts = LowRankExperts(config.experts, dim, config.rank)

    def forward(self, u: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = self.router(u, stream_task)
        return self.experts(u, routing.weights), routing

    def merged(self) -> nn.Module:
        """``moe`` has nothing constant to fold; the others split routed from shared experts."""
        if self.routing == "moe":
            return self
        return SplitExpertAdapter(self)


class SplitExpertAdapter(nn.Module):
    """Merged form: routed experts keep their bank; the shared experts become one part:
    ``ase`` -> ``FusedSharedExperts`` (rank S*r, gates per rank block, since ASE's shared
    weights vary per token); ``naive_shared`` -> a ``FrozenMap`` (constant weight 1, folded)."""

    def __init__(self, adapter: ExpertAdapter) -> None:
        super().__init__()
        routed = adapter.router.routed_weight.shape[1]
        total = adapter.experts.num_experts
        shared_bank = adapter.experts.slice(routed, total)
        self.router = adapter.router
        self.routed_experts = adapter.experts.slice(0, routed)
        self.shared_experts = (
            FusedSharedExperts(shared_bank)
            if adapter.routing == "ase"
            else FrozenMap(shared_bank.summed_map())
        )
        self.num_routed = routed

    def forward(self, u: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = self.router(u, stream_task)
        routed_gates = routing.weights[..., : self.num_routed]  # (S, tokens, N-S)
        shared_gates = routing.weights[..., self.num_routed :]  # (S, tokens, S_shared)
        out = self.routed_experts(u, routed_gates) + self.shared_experts(u, shared_gates)
        return out, routing


def build_adapter(config: AdapterConfig, dim: int, num_tasks: int) -> nn.Module | None:
    """The adapter of one block for the configured variant (``None`` for ``none``)."""
    if config.has_experts:
        return ExpertAdapter(config, dim, num_tasks)
    if config.routing == "lora":
        return LowRankAdapter(dim, config.active_rank)
    return None


def merge_adapter(adapter: nn.Module) -> nn.Module:
    """The adapter with every constant-weight part folded (see each class's ``merged``)."""
    return adapter.merged() if isinstance(adapter, ExpertAdapter | LowRankAdapter) else adapter
