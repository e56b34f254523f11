"""``ASEModel``: the ViT backbone with task streams, the task heads and the router
statistics, behind the contract of docs/architecture.md (contract 2)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.heads import DenseHead, postprocess
from model.losses import load_balance_loss, mutual_information_loss
from model.routing import RouterOutput
from model.tasks import TASK_NAMES, TASKS, require_dataset, require_task
from model.vit import ViTBackbone

AuxTerm = Callable[[RouterOutput, Tensor, int], Tensor]
"""(one layer's routing, stream task slots, number of tasks) -> scalar loss."""


def _mi_term(routing: RouterOutput, slots: Tensor, num_tasks: int) -> Tensor:
    return mutual_information_loss(routing.routed_probs, slots, num_tasks)


def _balance_term(routing: RouterOutput, slots: Tensor, num_tasks: int) -> Tensor:
    return load_balance_loss(routing.routed_probs, routing.selected, slots, num_tasks)


def image_major_streams(
    batch: int, tasks: Sequence[str], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Every image x every task, image-major: stream_image, stream_task (B*T,) int64."""
    ids = torch.tensor([TASK_NAMES.index(require_task(t).name) for t in tasks], device=device)
    stream_image = torch.arange(batch, device=device).repeat_interleave(len(ids))
    return stream_image, ids.repeat(batch)


def exporting() -> bool:
    """Whether the code runs inside an export trace (``torch.export``, which the dynamo ONNX
    exporter runs, or the ONNX exporter itself): eager-only checks are skipped and export forms
    emit their ONNX Runtime ops. The one test of it, for the model and ``export/`` alike."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


@dataclass
class ModelOutput:
    maps: dict[str, Tensor]  # task -> (S_t, C, H, W), that task's streams in stream order
    expert_tokens: Tensor  # (S, L, N) tokens each expert processed, routed first
    shared_gate_mass: Tensor  # (S, L) summed shared-expert gate weight
    aux: dict[str, Tensor] = field(default_factory=dict)  # weighted router aux losses


class ASEModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        backbone, adapters = config.backbone, config.adapters
        dataset = require_dataset(config.dataset)
        self.backbone = ViTBackbone(backbone, adapters, len(config.tasks))
        levels = len(self.backbone.feature_layers)
        detail = self.backbone.patch_embed.detail_channels  # a hybrid's CNN maps, or none
        self.heads = nn.ModuleDict(
            {
                t: DenseHead(backbone.width, levels, backbone.grid, dataset.channels(t), detail)
                for t in config.tasks
            }
        )
        # Global task id (index in TASK_NAMES) -> this model's task slot; -1: not in the model.
        slots = [config.tasks.index(t) if t in config.tasks else -1 for t in TASK_NAMES]
        self.register_buffer("task_slot", torch.tensor(slots), persistent=False)
        weights = config.router_loss
        terms = {
            "mi": (weights.mi_weight, _mi_term),
            "balance": (weights.balance_weight, _balance_term),
        }
        # Zero weight disables a term: it is not even computed.
        self.aux_terms: dict[str, tuple[float, AuxTerm]] = {
            name: term for name, term in terms.items() if term[0] > 0 and adapters.has_experts
        }
        self.combine_layers = torch.sum if weights.layers == "sum" else torch.mean

    def forward(self, images: Tensor, stream_image: Tensor, stream_task: Tensor) -> ModelOutput:
        """images (B, 3, H, W) normalised; stream_image, stream_task (S,) int64 (global ids)."""
        if not exporting():
            self._check_streams(images, stream_image, stream_task)
        slots = self.task_slot.index_select(0, stream_task)  # (S,)
        features, routings, detail = self.backbone(images, stream_image, slots)
        size = (images.shape[-2], images.shape[-1])
        maps = {
            task: self.heads[task](features, streams, size, detail, stream_image)
            for task, streams in self._task_streams(stream_task).items()
        }
        expert_tokens, shared_mass = self._router_statistics(routings, stream_task.shape[0], images)
        # The router losses only steer training: inference (eval mode) does not pay for them.
        aux = self._aux(routings, slots) if self.training else {}
        return ModelOutput(maps, expert_tokens, shared_mass, aux)

    def predict(self, images: Tensor, stream_image: Tensor, stream_task: Tensor) -> ModelOutput:
        """``forward`` with each map post-processed for its task's kind."""
        out = self(images, stream_image, stream_task)
        maps = {task: postprocess(TASKS[task].kind, raw) for task, raw in out.maps.items()}
        return replace(out, maps=maps)

    def forward_tasks(self, images: Tensor, tasks: Sequence[str]) -> ModelOutput:
        """Every image x every task, image-major; each map is then (B, C, H, W)."""
        stream_image, stream_task = image_major_streams(images.shape[0], tasks, images.device)
        return self(images, stream_image, stream_task)

    def merge(self) -> ASEModel:
        """A frozen deep copy in inference form, the one export writes: the backbone LoRA
        folded into the frozen weights; each expert bank flattened into one gated low-rank pair
        with the shared experts as its last S*r rank columns (``MergedExpertAdapter``); the
        ``lora`` adapter kept as its low-rank pair. No aux losses. Its state dict differs from
        this model's: checkpoint the unmerged model."""
        merged = copy.deepcopy(self)
        merged.backbone.merge_()
        merged.aux_terms = {}
        return merged.requires_grad_(False)

    def _task_streams(self, stream_task: Tensor) -> dict[str, Tensor]:
        """Task -> indices of its streams (increasing). Eagerly, tasks without streams are
        dropped (not computed); an exported graph keeps every task, possibly empty."""
        streams = {
            task: torch.nonzero(stream_task == TASK_NAMES.index(task)).flatten()
            for task in self.config.tasks
        }
        if exporting():
            return streams
        return {task: index for task, index in streams.items() if index.numel()}

    def _router_statistics(
        self, routings: list[RouterOutput], num_streams: int, like: Tensor
    ) -> tuple[Tensor, Tensor]:
        depth = self.config.backbone.depth
        if not routings:  # structural: variants without an expert bank
            return like.new_zeros(num_streams, depth, 0), like.new_zeros(num_streams, depth)
        expert_tokens = torch.stack([r.expert_tokens() for r in routings], dim=1)  # (S, L, N)
        shared_mass = torch.stack([r.shared_gate_mass() for r in routings], dim=1)  # (S, L)
        return expert_tokens, shared_mass

    def _aux(self, routings: list[RouterOutput], slots: Tensor) -> dict[str, Tensor]:
        """Each enabled term: weight x (sum or mean, ``router_loss.layers``) over layers."""
        num_tasks = len(self.config.tasks)
        return {
            name: weight
            * self.combine_layers(torch.stack([term(r, slots, num_tasks) for r in routings]))
            for name, (weight, term) in self.aux_terms.items()
        }

    def _check_streams(self, images: Tensor, stream_image: Tensor, stream_task: Tensor) -> None:
        """Eager-only validation (it reads tensor values, so export skips it)."""
        if stream_image.dim() != 1 or stream_image.shape != stream_task.shape:
            raise ValueError("stream_image and stream_task must be 1-D and of the same length")
        size = self.config.backbone.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
        if not set(stream_image.tolist()) <= set(range(images.shape[0])):
            raise ValueError(f"stream_image out of range for a batch of {images.shape[0]} images")
        allowed = {TASK_NAMES.index(task) for task in self.config.tasks}
        unknown = set(stream_task.tolist()) - allowed
        if unknown:
            raise ValueError(
                f"stream_task ids {sorted(unknown)} are not tasks of this model {allowed}"
            )
