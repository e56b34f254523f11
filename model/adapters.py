"""The adapter beside each block's FFN (``h' = h + FFN(u) + Adapter(u)``, u = LN2(h)), one
class per kind of variant, chosen once by ``build_adapter`` from the ``Routing`` member; and
the inference form of the expert adapter (``ASEModel.merge()``, what export writes).

- ``ase``/``moe``/``naive_shared``: ``ExpertAdapter`` = per-task router + one bank of N experts;
  merged: ``MergedExpertAdapter``.
- ``lora``: ``LowRankAdapter`` of rank (k+S)*r, task-agnostic, no routing; merged: itself (one
  low-rank pair costs 2*r*d per token, folding it into a d x d map would cost d*d).
- ``none``: no adapter at all (the block class has none; see ``vit.py``).
"""

from __future__ import annotations

from torch import Tensor, nn

from model.config import AdapterConfig
from model.experts import LowRankAdapter, LowRankExperts, flatten_bank, gated_low_rank
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

    def merged(self) -> MergedExpertAdapter:
        return MergedExpertAdapter(self)


def route_fp32(router: nn.Module, u: Tensor, stream_task: Tensor) -> RouterOutput:
    """Routers always run in fp32, also in an fp16 graph: the top-k selection and the router
    statistics then match the fp32 reference far more often (and onnxruntime 1.31's CPU
    fp16 path selected fewer than k experts per token in our top-k mask: checked)."""
    return router(u.float(), stream_task)


class MergedExpertAdapter(nn.Module):
    """The inference form of an ``ExpertAdapter``: its router, and its bank flattened once into
    one frozen low-rank pair A (N*r, d), B (d, N*r) (``flatten_bank``) whose rank blocks the
    router's dense weights gate, so one GEMM pair computes every expert.

    The S shared experts are the pair's last S*r rank columns: for ``ase`` exactly the fused
    rank-S*r pair with its gates applied per rank block; for ``naive_shared`` their gates are
    the constant 1 there. Export writes this module as it is (the ``dense`` graph) and builds
    the ``sparse`` dispatch from it (``export/dispatch.py``).
    """

    def __init__(self, adapter: ExpertAdapter) -> None:
        super().__init__()
        self.router = adapter.router
        self.routing = adapter.routing
        self.num_experts, self.rank = adapter.experts.num_experts, adapter.experts.rank
        self.num_routed = adapter.router.routed_weight.shape[1]
        a_all, b_all = flatten_bank(adapter.experts.A.detach(), adapter.experts.B.detach())
        self.register_buffer("A", a_all.clone())  # (N*r, d)
        self.register_buffer("B", b_all.clone())  # (d, N*r)

    def forward(self, u: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput]:
        routing = route_fp32(self.router, u, stream_task)
        return gated_low_rank(u, self.A, self.B, routing.weights.to(u.dtype)), routing


def build_adapter(config: AdapterConfig, dim: int, num_tasks: int) -> nn.Module | None:
    """The adapter of one block for the configured variant (``None`` for ``none``)."""
    if config.routing.has_experts:
        return ExpertAdapter(config, dim, num_tasks)
    if config.routing.has_adapter:
        return LowRankAdapter(dim, config.active_rank)
    return None


def merge_adapter(adapter: nn.Module) -> nn.Module:
    """The adapter's inference form (see the module docstring)."""
    return adapter.merged() if isinstance(adapter, ExpertAdapter) else adapter
