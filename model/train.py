"""Train an ASE multi-task model: a single-task backbone stage, then the multi-task ASE stage.

    python -m model.train --preset demo --out runs/demo
    python -m model.train --preset demo --out runs/demo --resume
    python -m model.train --preset pascal-vit-s --data /data/PASCAL_MT --out runs/vit-s \
        --pretrained vit_small_patch16_224.pth        # timm file: skips the single-task stage
    python -m model.train --preset photo --data /data/photos --out runs/photo \
        --init runs/distill/vit.pth       # model.distill's file: stage 1 goes on from it
    torchrun --nproc-per-node 2 -m model.train --preset tiny --out runs/ddp   # DDP (gloo on CPU)

Stage 1 (``single_task``) trains the backbone's normally frozen base weights and one task's
head on that task alone (a stand-in for the paper's pretrained single-task ViT). Stage 2
(``multi_task``) freezes them and trains LoRA, task embeddings, routers, experts and heads on
all tasks, every image running one stream per task. ``out/ckpt.pt`` holds the contract's keys
plus ``train`` (the ``TrainConfig``) and ``stage``; ``out/log.jsonl`` the losses and evaluations.

This file is the command line (also ``ase-train``); the loop is ``model/trainer.py``, what
each stage trains ``model/stages.py``, the batches ``model/data/sampling.py``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from model.cli import run
from model.config import Routing
from model.presets import PRESETS, TrainConfig, preset
from model.trainer import train

_DATA_OPTIONS = (
    "workers",
    "photos_per_batch",
    "paste_people",
    "nobody_parts",
    "grey_photos",
    "full_views",
    "soft_saliency",
)
"""``DataConfig`` fields the command line sets under their own names (unset: the preset's)."""


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the command line's overrides applied."""
    config = preset(args.preset)
    data = {name: getattr(args, name) for name in _DATA_OPTIONS if getattr(args, name) is not None}
    if args.data:
        data["root"] = args.data
    config = replace(config, data=replace(config.data, **data))  # checked once, all together
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
    for name in ("batch_size", "seed", "eval_every", "checkpoint_every", "tuned_cnn_stages"):
        if getattr(args, name) is not None:
            config = replace(config, **{name: getattr(args, name)})
    if args.positive_weight:
        config = replace(
            config,
            positive_weights=_positive_weights(config.positive_weights, args.positive_weight),
        )
    return config


def _positive_weights(weights: dict[str, float], overrides: list[str]) -> dict[str, float]:
    """``TASK=W`` fixes a probability task's positive weight; ``TASK=balanced`` goes back to
    the per-map balance. TrainConfig checks the tasks and weights."""
    weights = dict(weights)
    for override in overrides:
        task, sep, value = override.partition("=")
        if not sep:
            raise ValueError(
                f"--positive-weight: expected TASK=W or TASK=balanced, got {override!r}"
            )
        if value == "balanced":
            weights.pop(task, None)
            continue
        try:
            weights[task] = float(value)
        except ValueError:
            raise ValueError(
                f"--positive-weight: {task}: expected a number or 'balanced', got {value!r}"
            ) from None
    return weights


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="run folder (ckpt.pt, log.jsonl)")
    parser.add_argument("--data", help="PASCAL_MT root (pascal presets)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    parser.add_argument("--pretrained", type=Path, help="timm ViT file: skip the single stage")
    parser.add_argument(
        "--init", type=Path, help="ViT weights file (model.distill's) the single stage starts from"
    )
    parser.add_argument("--spec", help="expert bank N/k/S/r")
    parser.add_argument("--routing", choices=[r.value for r in Routing], help="adapter variant")
    parser.add_argument("--single-steps", type=int, help="steps of the single-task stage")
    parser.add_argument("--multi-steps", type=int, help="steps of the multi-task stage")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument(
        "--photos-per-batch", type=int, help="photo presets: photos in every batch, scenes the rest"
    )
    parser.add_argument(
        "--paste-people",
        type=float,
        metavar="SHARE",
        help="photo presets: share of the crops of photos with nobody in them that get a "
        "training photo's person pasted on",
    )
    parser.add_argument(
        "--nobody-parts",
        action=argparse.BooleanOptionalAction,
        help="photo presets: label the parts of photos with nobody in them background "
        "(--no-nobody-parts: leave them unlabelled)",
    )
    parser.add_argument(
        "--grey-photos",
        type=float,
        metavar="SHARE",
        help="photo presets: share of the photo crops turned greyscale",
    )
    parser.add_argument(
        "--full-views",
        type=float,
        metavar="SHARE",
        help="photo presets: share of the photo crops that are the whole photo (the served "
        "view; photo: 0.5)",
    )
    parser.add_argument(
        "--soft-saliency",
        action=argparse.BooleanOptionalAction,
        help="photo presets: train saliency on ISNet's probability (a soft target) instead "
        "of the probability binarised at 0.5 (photo: on)",
    )
    parser.add_argument(
        "--positive-weight",
        action="append",
        metavar="TASK=W",
        help="fix a probability task's positive weight in its BCE (repeatable); "
        "TASK=balanced weighs each map by its own share of negatives",
    )
    parser.add_argument(
        "--tune-cnn",
        dest="tuned_cnn_stages",
        type=int,
        metavar="STAGES",
        help="hybrid presets: train the CNN's last STAGES stages with the base weights in the "
        "single-task stage (at a tenth of its learning rate)",
    )
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
    return train(config, args.out, args.resume, args.pretrained, args.device, args.until, args.init)


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
