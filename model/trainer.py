"""The training loop: ``train`` builds (or resumes) a run, ``Trainer`` runs its stages.

``out/ckpt.pt`` holds the contract's keys plus ``train`` (the ``TrainConfig``) and ``stage``;
``out/log.jsonl`` the losses and evaluations. A run stopped at any step (``until``) and resumed
ends with the weights of an uninterrupted run: batches, augmentations and the schedule are
functions of the step (``model/data/sampling.py``, ``model/stages.py``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import NORMALS_VALID
from model.data.mixed import PhotoMapsSource, photo_classes
from model.data.sampling import train_loader
from model.data.sources import SCENE_DATASETS, train_source, val_source
from model.distributed import Processes, barrier, end_processes, init_processes
from model.evaluate import eval_loader, evaluate, flat_metrics, model_predictor, primary
from model.losses import FIXED_POSITIVE_WEIGHT, multitask_loss
from model.model import ASEModel
from model.presets import TrainConfig
from model.pretrained import load_timm_vit
from model.stages import (
    base_parameter_names,
    learning_rate,
    make_optimizer,
    set_stage,
    stage_bounds,
    stage_tasks,
)
from model.tasks import IGNORE_INDEX, TASK_NAMES, TASKS
from model.vit import HybridEmbed


def labelled_streams(
    targets: dict[str, Tensor], tasks: tuple[str, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Image-major streams (stream_image, stream_task) of the (image, task) pairs with any
    label: a photo's normals, or its parts without a person, are not computed at all."""
    labelled = [
        (targets[NORMALS_VALID] if TASKS[t].kind == "vector" else targets[t] != IGNORE_INDEX)
        .flatten(1)
        .any(dim=1)
        for t in tasks
    ]
    image, slot = torch.stack(labelled, dim=1).nonzero(as_tuple=True)  # row-major: image-major
    ids = torch.tensor([TASK_NAMES.index(t) for t in tasks], device=device)
    return image.to(device), ids[slot.to(device)]


def training_step(
    network: nn.Module,
    images: Tensor,
    targets: dict[str, Tensor],
    tasks: tuple[str, ...],
    autocast: AbstractContextManager,
    positive_weights: Mapping[str, float] = FIXED_POSITIVE_WEIGHT,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward every labelled (image, task) stream and return (weighted total loss, per-term
    losses); a task's targets are its streams' images, in stream order."""
    stream_image, stream_task = labelled_streams(targets, tasks, images.device)
    aligned = {
        task: targets[task][stream_image[stream_task == TASK_NAMES.index(task)]] for task in tasks
    }
    with autocast:
        outputs = network(images, stream_image, stream_task)
        streams = {task: aligned[task] for task in outputs.maps}
        return multitask_loss(outputs, streams, positive_weights)


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on GPU (no loss scaling needed); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        processes: Processes,
        model: ASEModel,
        payload: dict[str, Any] | None = None,
        until: int | None = None,
    ) -> None:
        self.config, self.out, self.processes = config, out, processes
        self.until = config.total_steps if until is None else min(until, config.total_steps)
        self.model = tunable(model, config.tuned_cnn_stages).to(processes.device)
        out.mkdir(parents=True, exist_ok=True)
        self.base = base_parameter_names(tunable(ASEModel(config.model), config.tuned_cnn_stages))
        self.payload = payload  # a resumed checkpoint, or None
        self.step = int(payload["step"]) if payload else 0
        self.metrics: dict[str, float] | None = payload.get("metrics") if payload else None
        self._last_eval = -1  # step of the last evaluation

    def fit(self) -> dict[str, float] | None:
        for stage, (start, stop) in stage_bounds(self.config).items():
            if self.step < min(stop, self.until):
                self._run_stage(stage, max(start, self.step), min(stop, self.until))
        finished = self.step == self.config.total_steps > 0
        if finished and (self.metrics is None or self._last_eval != self.step):
            self._evaluate()
            self._save("multi_task", None)
        return self.metrics

    def _run_stage(self, stage: str, start: int, stop: int) -> None:
        config = self.config
        tasks = stage_tasks(config, stage)
        set_stage(self.model, stage, self.base, config.single_task_name)
        optimizer = make_optimizer(self.model, config.weight_decay, config.cnn_lr_scale)
        if self.payload and self.payload.get("stage") == stage and self.payload["optimizer"]:
            optimizer.load_state_dict(self.payload["optimizer"])
        network = self._wrap()
        torch.manual_seed(config.seed * 7919 + start + self.processes.rank)  # augmentations
        loader = train_loader(config, tasks, start, stop, self.processes)
        stage_config = getattr(config, stage)
        offset = stage_bounds(config)[stage][0]
        bar = tqdm(
            total=stop - start,
            desc=stage,
            disable=not self.processes.main,
            mininterval=2.0 if sys.stderr.isatty() else 30.0,
        )
        clock, seen = time.perf_counter(), 0
        for images, targets in loader:
            lr = learning_rate(stage_config, self.step - offset)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # older checkpoints: none
            loss, terms = self._update(network, optimizer, images, targets, tasks)
            self.step += 1
            seen += images.shape[0] * self.processes.world
            rate = seen / (time.perf_counter() - clock)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.1f}")
            if self.step % 10 == 0 or self.step == stop:
                self._log_step(stage, loss, lr, rate, terms)
            self._periodic(stage, optimizer, stop)
        bar.close()
        self._save(stage, optimizer)

    def _update(self, network, optimizer, images, targets, tasks) -> tuple[float, dict]:
        device = self.processes.device
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        loss, terms = training_step(
            network, images, targets, tasks, _autocast(device), self.config.positive_weights
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step}: loss is {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip)
        optimizer.step()
        return float(loss.detach()), {k: v.detach() for k, v in terms.items()}

    def _wrap(self) -> nn.Module:
        """DDP is rebuilt per stage: it records which parameters take gradients."""
        if not self.processes.distributed:
            return self.model
        ids = [self.processes.device.index] if self.processes.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _periodic(self, stage: str, optimizer, stop: int) -> None:
        config = self.config
        if config.eval_every and self.step % config.eval_every == 0 and self.step != stop:
            self._evaluate()
        if config.checkpoint_every and self.step % config.checkpoint_every == 0:
            self._save(stage, optimizer)

    def _evaluate(self) -> None:
        """Held-out metrics on the main process (others wait at the barrier)."""
        data = self.config.data
        if self.processes.main and (data.val_size or data.dataset not in SCENE_DATASETS):
            size = self.config.model.backbone.image_size
            loader = eval_loader(val_source(self.config.data, size), size, self.config.model.tasks)
            self.model.eval()
            results = evaluate(
                model_predictor(self.model, self.processes.device),
                loader,
                self.config.model.tasks,
                self.config.model.dataset,
            )
            self.model.train()
            self.metrics = flat_metrics(results)
            self._log({"eval": primary(results)})
            tqdm.write(f"step {self.step} eval: " + json.dumps(primary(results)))
        self._last_eval = self.step
        barrier(self.processes)

    def _save(self, stage: str, optimizer) -> None:
        if self.processes.main:
            extra = {"train": self.config.to_dict(), "stage": stage}
            save_checkpoint(
                self.out / "ckpt.pt", self.model, optimizer, self.step, self.metrics, extra=extra
            )
        barrier(self.processes)

    def _log_step(
        self, stage: str, loss: float, lr: float, rate: float, terms: dict[str, Tensor]
    ) -> None:
        self._log(
            {
                "stage": stage,
                "world": self.processes.world,
                "loss": loss,
                "lr": lr,
                "images_per_s": rate,
                **{k: float(v) for k, v in terms.items()},
            }
        )

    def _log(self, record: dict[str, Any]) -> None:
        if self.processes.main:
            with (self.out / "log.jsonl").open("a") as log:
                log.write(json.dumps({"step": self.step, **record}) + "\n")


# ---------------------------------------------------------------- building a run


def _differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Paths where two nested dicts differ (for a readable config-mismatch error)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        keys = sorted(set(stored) | set(wanted))
        return [
            d for k in keys for d in _differences(stored.get(k), wanted.get(k), f"{prefix}{k}.")
        ]
    return [] if stored == wanted else [f"{prefix[:-1]}: checkpoint {stored!r}, asked {wanted!r}"]


def resume_model(config: TrainConfig, path: Path) -> tuple[ASEModel, dict[str, Any]]:
    """The model and payload of ``path``; a ValueError when it was made with another model
    config (training settings may change: more steps, another eval interval)."""
    model, payload = load_checkpoint(path)
    # The rebuilt config, not the stored dict: fields added since then read as their rule.
    differences = _differences(model.config.to_dict(), config.model.to_dict())
    if differences:
        raise ValueError(f"{path} is from another model config: " + "; ".join(differences))
    return model.train(), payload


def tunable(model: ASEModel, stages: int) -> ASEModel:
    """``model`` with its hybrid CNN's last ``stages`` stages made base weights (trained by the
    single-task stage); unchanged for 0."""
    if stages:
        model.backbone.patch_embed.cnn.make_tunable(stages)
    return model


def new_model(config: TrainConfig, pretrained: Path | None) -> ASEModel:
    torch.manual_seed(config.seed)  # same initial weights in every process
    model = ASEModel(config.model)
    if isinstance(model.backbone.patch_embed, HybridEmbed):  # its CNN starts from ImageNet
        model.backbone.patch_embed.load_pretrained()
    if pretrained is not None:
        load_timm_vit(model.backbone, pretrained)
    return model.train()


def check_data(config: TrainConfig) -> None:
    """Fail before building anything when the dataset root or a layout file is missing."""
    size = config.model.backbone.image_size
    train_source(config.data, size)
    val_source(config.data, size)
    if config.data.photos_per_batch:  # the photo set's manifest and its training photos
        PhotoMapsSource(config.data.root or "", "train", photo_classes(config.model.dataset))


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    pretrained: str | Path | None = None,
    device: str | None = None,
    until: int | None = None,
    init: str | Path | None = None,
) -> dict | None:
    """Run (or resume) training into ``out``, stopping early at step ``until`` if given (a
    resumable checkpoint is saved there); returns the last evaluation's flat metrics.
    ``pretrained``: backbone weights that replace the single-task stage; ``init``: backbone
    weights the single-task stage starts from (``model.distill``'s file, then trained on)."""
    out = Path(out)
    if pretrained is not None and init is not None:
        raise ValueError("give pretrained (skips the single-task stage) or init, not both")
    check_data(config)
    if pretrained is not None:  # a pretrained backbone replaces the single-task stage
        config = replace(config, single_task=replace(config.single_task, steps=0))
    weights = pretrained if pretrained is not None else init
    processes = init_processes(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "ckpt.pt"
        if resume:
            model, payload = resume_model(config, checkpoint)
        else:
            model, payload = new_model(config, Path(weights) if weights else None), None
        return Trainer(config, out, processes, model, payload, until).fit()
    finally:
        end_processes(processes)
