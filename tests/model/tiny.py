"""Tiny model configs and helpers shared by the model tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import torch

from model.config import AdapterConfig, BackboneConfig, ModelConfig, RouterLossConfig
from model.model import ASEModel

SPEC_OF_VARIANT = {
    "ase": "8/2/2/2",
    "moe": "8/2/0/2",
    "naive_shared": "8/2/2/2",
    "lora": "8/2/2/2",
    "none": "8/2/2/2",
}


def tiny_config(routing: str = "ase", spec: str | None = None, **backbone) -> ModelConfig:
    options = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "heads": 2}
    options.update(backbone)
    return ModelConfig(
        backbone=BackboneConfig(**options),
        adapters=AdapterConfig(spec=spec or SPEC_OF_VARIANT[routing], routing=routing),
        router_loss=RouterLossConfig(mi_weight=0.01, balance_weight=0.01),
    )


def randomise_zero_inits(model: ASEModel, scale: float = 0.2) -> ASEModel:
    """Give every LoRA/expert B (zero at init) random values, so adapters change outputs and
    parity tests mean something."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def tiny_model(routing: str = "ase", spec: str | None = None, seed: int = 0, **backbone):
    torch.manual_seed(seed)
    return randomise_zero_inits(ASEModel(tiny_config(routing, spec, **backbone)))


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
