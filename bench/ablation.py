"""The paper's Table 1 in miniature, on synthetic scenes: single-task references, ``lora``,
``moe 16/4/0/4``, ``ase 16/3/1/4`` and ``ase 32/6/2/2``, each trained with the same budget.

    python bench/ablation.py --out runs/ablation            # writes ablation.json and .md

Protocol (every number comes from ``model/evaluate.py`` on a held-out ``test`` split):
  1. one single-task backbone (stage 1 of ``model/train.py`` on ``semseg``) stands in for the
     paper's pretrained ViT; every row below starts from its frozen base weights;
  2. each multi-task variant trains LoRA, task embeddings, routers, experts and heads on all
     five tasks for ``--steps`` steps (same batch, learning rate, schedule, seed);
  3. each single-task reference trains the same things (a plain LoRA adapter, no routing) on
     its one task for the same number of steps: these are the Δm references.
The model is smaller than the demo's (``--width``, ``--depth``, ``--size``) so the whole table
fits in about 15 minutes on 2 CPU cores; expect its ordering to be noisy at this scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import time
from dataclasses import replace

import torch

from model.config import AdapterConfig, BackboneConfig, ModelConfig
from model.data import SyntheticScenes
from model.evaluate import eval_loader, evaluate, model_predictor, primary
from model.metrics import delta_m
from model.model import ASEModel
from model.presets import DataConfig, StageConfig, TrainConfig
from model.tasks import TASK_NAMES
from model.train import Processes, Trainer, base_parameter_names

VARIANTS = {  # row name -> (routing, N/k/S/r)
    "lora": ("lora", "16/3/1/4"),
    "moe 16/4/0/4": ("moe", "16/4/0/4"),
    "ase 16/3/1/4": ("ase", "16/3/1/4"),
    "ase 32/6/2/2": ("ase", "32/6/2/2"),
}


def base_config(args: argparse.Namespace, tasks: tuple[str, ...], routing: str, spec: str):
    backbone = BackboneConfig(
        image_size=args.size, patch_size=args.size // 8, width=args.width, depth=args.depth,
        heads=args.width // 32,
    )  # fmt: skip
    return TrainConfig(
        model=ModelConfig(backbone, AdapterConfig(spec=spec, routing=routing), tasks=tasks),
        data=DataConfig(dataset="synthetic", val_size=0, augment="flip", workers=args.workers),
        single_task=StageConfig(steps=0, lr=1e-3),
        multi_task=StageConfig(steps=args.steps, lr=args.lr, warmup=25),
        batch_size=args.batch_size,
        eval_every=0,
        checkpoint_every=0,
        seed=args.seed,
    )


def pretrain_backbone(args: argparse.Namespace, out: Path) -> dict[str, torch.Tensor]:
    """Stage 1 once: the frozen base weights every row starts from."""
    config = base_config(args, TASK_NAMES, "none", "16/3/1/4")
    config = replace(
        config,
        single_task=StageConfig(steps=args.backbone_steps, lr=1e-3, warmup=25),
        multi_task=StageConfig(steps=0, lr=1e-3),
    )
    torch.manual_seed(args.seed)
    model = ASEModel(config.model).train()
    base = base_parameter_names(model)  # before training: stages change requires_grad
    Trainer(config, out, Processes(), model).fit()
    return {name: p.detach().clone() for name, p in model.named_parameters() if name in base}


def train_row(config: TrainConfig, base: dict[str, torch.Tensor], out: Path) -> ASEModel:
    torch.manual_seed(config.seed)
    model = ASEModel(config.model).train()
    missing = set(base_parameter_names(model)) ^ set(base)
    if missing:
        raise ValueError(f"base weights do not fit this variant: {sorted(missing)}")
    model.load_state_dict(base, strict=False)
    Trainer(config, out, Processes(), model).fit()
    return model.eval()


def score(model: ASEModel, args: argparse.Namespace) -> dict[str, float]:
    scenes = SyntheticScenes(args.size, args.eval_images, seed=args.seed, split="test")
    loader = eval_loader(scenes, args.size, model.config.tasks, batch_size=32)
    results = evaluate(model_predictor(model), loader, model.config.tasks, model.config.dataset)
    return primary(results)


def run(args: argparse.Namespace) -> dict:
    out = args.out
    clock = time.perf_counter()
    base = pretrain_backbone(args, out / "backbone")
    rows: dict[str, dict[str, float]] = {}
    reference: dict[str, float] = {}
    for task in TASK_NAMES:
        config = base_config(args, (task,), "lora", "16/3/1/4")
        reference |= score(train_row(config, base, out / f"single-{task}"), args)
        print(f"single-task {task}: {reference[task]:.2f}", flush=True)
    rows["single-task refs"] = dict(reference)
    for name, (routing, spec) in VARIANTS.items():
        config = base_config(args, TASK_NAMES, routing, spec)
        rows[name] = score(train_row(config, base, out / name.replace(" ", "-").replace("/", "")),
                           args)  # fmt: skip
        print(f"{name}: {rows[name]}", flush=True)
    deltas = {name: delta_m(values, reference) for name, values in rows.items()}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    seconds = time.perf_counter() - clock
    return {"rows": rows, "delta_m": deltas, "seconds": seconds, "settings": settings}


def markdown(report: dict) -> str:
    columns = ("semseg mIoU ↑", "parts mIoU ↑", "sal mIoU ↑", "normals mErr ↓", "edges odsF ↑")
    lines = ["| model | " + " | ".join(columns) + " | Δm % |", "|---" * 7 + "|"]
    for name, values in report["rows"].items():
        cells = " | ".join(f"{values[task]:.2f}" for task in TASK_NAMES)
        lines.append(f"| {name} | {cells} | {report['delta_m'][name]:+.2f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--steps", type=int, default=300, help="training steps of every row")
    parser.add_argument("--backbone-steps", type=int, default=400, help="stage-1 steps, once")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=64, help="image size (8x8 patches)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # 1: oversubscribed threads crawl on a shared machine
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)
    print(f"total {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
