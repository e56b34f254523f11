"""Checkpoints that rebuild their own model (contract 2): ``torch.save`` of a dict holding
``format_version``, ``config``, ``registry``, ``model``, ``optimizer``, ``step``, ``metrics``.
Save the *unmerged* model; ``ASEModel.merge()`` is for inference and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.model import ASEModel
from model.tasks import require_dataset

FORMAT_VERSION = 1


def _registry(config: ModelConfig) -> dict[str, Any]:
    return require_dataset(config.dataset).describe(config.tasks)


def save_checkpoint(
    path: str | Path,
    model: ASEModel,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically (temp file + rename) so a crash never leaves half a
    file where a good one was. ``extra``: more keys (e.g. the training config) beside the
    contract's; they may not replace a contract key."""
    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "registry": _registry(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "metrics": dict(metrics) if metrics is not None else None,
    }
    clashing = sorted(set(extra or {}) & set(payload))
    if clashing:
        raise ValueError(f"extra checkpoint keys {clashing} would replace contract keys")
    payload.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    torch.save(payload, partial)
    partial.replace(path)
    return path


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many types on a foreign file
        raise ValueError(f"{path} is not a checkpoint: {error}") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{path} is not a checkpoint: no format_version")
    if payload["format_version"] != FORMAT_VERSION:
        version = payload["format_version"]
        raise ValueError(f"{path}: format_version {version}, this code reads {FORMAT_VERSION}")
    for key in ("config", "model"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path}: checkpoint has no {key}")
    return payload


def _check_registry(path: Path, config: ModelConfig, stored: dict[str, Any] | None) -> None:
    """The labels a checkpoint was trained with must still mean the same things."""
    if stored is None:
        return
    keys = ("name", "id", "channels", "classes")
    now = [{k: t[k] for k in keys} for t in _registry(config)["tasks"]]
    then = [{k: t.get(k) for k in keys} for t in stored.get("tasks", [])]
    if now != then:
        raise ValueError(f"{path}: the task registry changed since this checkpoint was saved")


def load_checkpoint(path: str | Path) -> tuple[ASEModel, dict[str, Any]]:
    """Rebuild the model from the stored config and load its weights (strictly). Returns the
    model (eval mode) and the whole payload (optimizer state, step, metrics...)."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except ValueError as error:
        raise ValueError(f"{path}: bad config: {error}") from None
    _check_registry(path, config, payload.get("registry"))
    model = ASEModel(config)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the stored config: {error}") from None
    return model.eval(), payload
