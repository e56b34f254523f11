"""Train an ASE multi-task model: a single-task backbone stage, then the multi-task ASE stage.

    python model/train.py --preset demo --out runs/demo
    python model/train.py --preset demo --out runs/demo --resume
    python model/train.py --preset pascal-vit-s --data /data/PASCAL_MT --out runs/vit-s \
        --pretrained vit_small_patch16_224.pth        # timm file: skips the single-task stage
    torchrun --nproc-per-node 2 model/train.py --preset tiny --out runs/ddp   # DDP (gloo on CPU)

Stage 1 (``single_task``) trains the backbone's normally frozen base weights and one task's
head on that task alone (a stand-in for the paper's pretrained single-task ViT). Stage 2
(``multi_task``) freezes them and trains LoRA, task embeddings, routers, experts and heads on
all tasks, every image running one stream per task. ``out/ckpt.pt`` holds the contract's keys
plus ``train`` (the ``TrainConfig``) and ``stage``; ``out/log.jsonl`` the losses and evaluations.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import Routing
from model.data import PascalContext, SyntheticScenes
from model.data.transforms import EvalTransform, MultiTaskDataset, TrainTransform, collate
from model.evaluate import eval_loader, evaluate, flat_metrics, model_predictor, primary
from model.losses import multitask_loss
from model.model import ASEModel, image_major_streams
from model.presets import PRESETS, DataConfig, StageConfig, TrainConfig, preset
from model.pretrained import load_timm_vit

STAGES = ("single_task", "multi_task")
SYNTHETIC_TRAIN_SCENES = 2**40  # scenes are rendered on demand: effectively unlimited


# ---------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_processes(device: str | None = None) -> Processes:
    """One process, or the process group ``torchrun`` describes (NCCL on GPUs, gloo on CPU)."""
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(device=torch.device(kind))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    if kind == "cuda":
        torch.cuda.set_device(local)
        return Processes(dist.get_rank(), world, torch.device("cuda", local))
    return Processes(dist.get_rank(), world, torch.device("cpu"))


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


# ---------------------------------------------------------------- data


class StepBatches(Sampler[list[int]]):
    """The index list of each step ``start .. stop-1`` for one process: a pure function of
    (seed, step, rank), so a resumed run sees exactly the batches it would have seen.
    Sample position p = (step * world + rank) * batch + j; with ``shuffle`` it goes through a
    fresh permutation of the dataset every epoch, else it is the index itself."""

    def __init__(
        self,
        length: int,
        batch: int,
        start: int,
        stop: int,
        seed: int,
        processes: Processes,
        shuffle: bool,
    ) -> None:
        self.length, self.batch, self.start, self.stop = length, batch, start, stop
        self.seed, self.processes, self.shuffle = seed, processes, shuffle
        self._permutation: tuple[int, np.ndarray] | None = None  # (epoch, order), reused

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = (step * self.processes.world + self.processes.rank) * self.batch
            yield [self._index(position) for position in range(first, first + self.batch)]

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if not self.shuffle:
            return offset
        if self._permutation is None or self._permutation[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
            self._permutation = (epoch, order)
        return int(self._permutation[1][offset])


def train_source(data: DataConfig, size: int):
    if data.dataset == "synthetic":
        return SyntheticScenes(size, SYNTHETIC_TRAIN_SCENES, seed=data.seed, split="train")
    if not data.root:
        raise ValueError("the pascal_context dataset needs --data ROOT")
    return PascalContext(data.root, "train")  # names a missing root or layout file


def val_source(data: DataConfig, size: int):
    if data.dataset == "synthetic":
        return SyntheticScenes(size, data.val_size, seed=data.seed, split="val")
    source = PascalContext(data.root, "val")
    if data.val_size:
        source.ids = source.ids[: data.val_size]
    return source


def train_transform(augment: str, size: int):
    if augment == "benchmark":
        return TrainTransform(size)
    if augment == "flip":
        return TrainTransform(size, scale=(1.0, 1.0), flip=True, photometric=False)
    return EvalTransform(size)


def train_loader(
    config: TrainConfig, tasks: tuple[str, ...], start: int, stop: int, processes: Processes
) -> DataLoader:
    size = config.model.backbone.image_size
    source = train_source(config.data, size)
    dataset = MultiTaskDataset(source, train_transform(config.data.augment, size), tasks)
    batches = StepBatches(
        len(source),
        config.batch_size,
        start,
        stop,
        config.seed,
        processes,
        shuffle=config.data.dataset != "synthetic",
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=config.data.workers,
        persistent_workers=False,
        pin_memory=processes.device.type == "cuda",
    )


# ---------------------------------------------------------------- what each stage trains


def base_parameter_names(model: nn.Module) -> frozenset[str]:
    """Parameters frozen by construction (patch/position embeddings, norms, base linears):
    the "pretrained" weights that only the single-task stage trains."""
    return frozenset(name for name, p in model.named_parameters() if not p.requires_grad)


def set_stage(model: ASEModel, stage: str, base: frozenset[str], task: str) -> list[str]:
    """Mark what ``stage`` trains; returns the trainable parameter names."""
    head = f"heads.{task}."
    for name, parameter in model.named_parameters():
        if stage == "single_task":
            parameter.requires_grad_(name in base or name.startswith(head))
        else:
            parameter.requires_grad_(name not in base)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW on trainable parameters; no decay on vectors (norms, biases, embeddings' rows)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=0.0)


def learning_rate(stage: StageConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr``; ``step`` counts within the stage."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(stage.steps - stage.warmup, 1)
    return stage.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def stage_bounds(config: TrainConfig) -> dict[str, tuple[int, int]]:
    """Global step range [start, stop) of each stage."""
    first = config.single_task.steps
    return {"single_task": (0, first), "multi_task": (first, config.total_steps)}


# ---------------------------------------------------------------- one step


def training_step(
    network: nn.Module, images: Tensor, targets: dict[str, Tensor], tasks: tuple[str, ...], autocast
) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward every (image, task) stream and return (weighted total loss, per-term losses)."""
    stream_image, stream_task = image_major_streams(images.shape[0], tasks, images.device)
    with autocast:
        outputs = network(images, stream_image, stream_task)
        return multitask_loss(outputs, {task: targets[task] for task in tasks})


def _autocast(device: torch.device):
    """bf16 autocast on GPU (no loss scaling needed); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------- the trainer


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
        self.model = model.to(processes.device)
        out.mkdir(parents=True, exist_ok=True)
        self.base = base_parameter_names(ASEModel(config.model))
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
        tasks = (config.single_task_name,) if stage == "single_task" else config.model.tasks
        set_stage(self.model, stage, self.base, config.single_task_name)
        optimizer = make_optimizer(self.model, config.weight_decay)
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
                group["lr"] = lr
            loss, terms = self._update(network, optimizer, images, targets, tasks)
            self.step += 1
            seen += images.shape[0] * self.processes.world
            rate = seen / (time.perf_counter() - clock)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.1f}")
            if self.step % 10 == 0 or self.step == stop:
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
            self._periodic(stage, optimizer, stop)
        bar.close()
        self._save(stage, optimizer)

    def _update(self, network, optimizer, images, targets, tasks) -> tuple[float, dict]:
        device = self.processes.device
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        loss, terms = training_step(network, images, targets, tasks, _autocast(device))
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
        if self.processes.main and (data.val_size or data.dataset != "synthetic"):
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


def new_model(config: TrainConfig, pretrained: Path | None) -> ASEModel:
    torch.manual_seed(config.seed)  # same initial weights in every process
    model = ASEModel(config.model)
    if pretrained is not None:
        load_timm_vit(model.backbone, pretrained)
    return model.train()


def check_data(config: TrainConfig) -> None:
    """Fail before building anything when the dataset root or a layout file is missing."""
    size = config.model.backbone.image_size
    train_source(config.data, size)
    val_source(config.data, size)


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    pretrained: str | Path | None = None,
    device: str | None = None,
    until: int | None = None,
) -> dict | None:
    """Run (or resume) training into ``out``, stopping early at step ``until`` if given (a
    resumable checkpoint is saved there); returns the last evaluation's flat metrics."""
    out = Path(out)
    check_data(config)
    if pretrained is not None:  # a pretrained backbone replaces the single-task stage
        config = replace(config, single_task=replace(config.single_task, steps=0))
    processes = init_processes(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "ckpt.pt"
        if resume:
            model, payload = resume_model(config, checkpoint)
        else:
            model, payload = new_model(config, Path(pretrained) if pretrained else None), None
        return Trainer(config, out, processes, model, payload, until).fit()
    finally:
        if processes.distributed:
            dist.destroy_process_group()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the command line's overrides applied."""
    config = preset(args.preset)
    data = config.data
    if args.data:
        data = replace(data, root=args.data)
    if args.workers is not None:
        data = replace(data, workers=args.workers)
    config = replace(config, data=data)
    if args.spec or args.routing:
        adapters = replace(
            config.model.adapters,
            spec=args.spec or config.model.adapters.spec,
            routing=args.routing or config.model.adapters.routing,
        )
        config = replace(config, model=replace(config.model, adapters=adapters))
    for stage, steps in (("single_task", args.single_steps), ("multi_task", args.multi_steps)):
        if steps is not None:
            config = replace(config, **{stage: replace(getattr(config, stage), steps=steps)})
    for name in ("batch_size", "seed", "eval_every", "checkpoint_every"):
        if getattr(args, name) is not None:
            config = replace(config, **{name: getattr(args, name)})
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="run folder (ckpt.pt, log.jsonl)")
    parser.add_argument("--data", help="PASCAL_MT root (pascal presets)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    parser.add_argument("--pretrained", type=Path, help="timm ViT file: skip the single stage")
    parser.add_argument("--spec", help="expert bank N/k/S/r")
    parser.add_argument("--routing", choices=[r.value for r in Routing], help="adapter variant")
    parser.add_argument("--single-steps", type=int, help="steps of the single-task stage")
    parser.add_argument("--multi-steps", type=int, help="steps of the multi-task stage")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--until", type=int, help="stop (resumably) after this global step")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 is faster on a machine others share)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict | None:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    return train(config, args.out, args.resume, args.pretrained, args.device, args.until)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
