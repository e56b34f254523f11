"""The paper's Table 1 in miniature, on synthetic scenes, over several seeds: single-task
references, ``lora``, ``moe 16/4/0/4``, ``ase 16/3/1/4`` and ``ase 32/6/2/2``, each trained with
the same budget.

    python -m bench.ablation --out runs/ablation --seeds 0 1 2   # writes ablation.json and .md

Protocol (every number comes from ``model/evaluate.py``'s code on one held-out ``test`` split):
  1. one single-task backbone (stage 1 of ``model/train.py`` on ``semseg``, ``--backbone-seed``)
     stands in for the paper's pretrained ViT; every row of every seed starts from its frozen
     base weights (the paper, too, fine-tunes one pretrained model);
  2. for each seed s (shared by all rows, so rows compare pair by pair): each multi-task
     variant trains LoRA, task embeddings, routers, experts and heads on all five tasks for
     ``--steps`` steps, with initial weights, augmentations and training scenes drawn from s;
  3. each single-task reference trains the same things (a plain LoRA adapter, no routing) on
     its one task, same steps and seed: the Δm references of that seed.
Reported: every row's metrics and Δm as mean and standard deviation over seeds (sample std,
n-1), and per seed the ASE rows minus the MoE row. ``ablation.json`` is rewritten after every
row, so a stopped run keeps what it finished; ``--resume`` skips the rows already in it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.config import AdapterConfig, BackboneConfig, ModelConfig
from model.data import SyntheticScenes
from model.distributed import Processes
from model.evaluate import eval_loader, evaluate, model_predictor, primary
from model.metrics import delta_m
from model.model import ASEModel
from model.presets import DataConfig, StageConfig, TrainConfig
from model.stages import base_parameter_names
from model.tasks import TASK_NAMES
from model.trainer import Trainer

VARIANTS = {  # row name -> (routing, N/k/S/r)
    "lora": ("lora", "16/3/1/4"),
    "moe 16/4/0/4": ("moe", "16/4/0/4"),
    "ase 16/3/1/4": ("ase", "16/3/1/4"),
    "ase 32/6/2/2": ("ase", "32/6/2/2"),
}
REFERENCES = "single-task refs"
MOE_ROW, ASE_ROWS = "moe 16/4/0/4", ("ase 16/3/1/4", "ase 32/6/2/2")


def base_config(
    args: argparse.Namespace, tasks: tuple[str, ...], routing: str, spec: str, seed: int
) -> TrainConfig:
    backbone = BackboneConfig(
        image_size=args.size,
        patch_size=args.size // 8,
        width=args.width,
        depth=args.depth,
        heads=args.width // 32,
    )
    data = DataConfig(
        dataset="synthetic", val_size=0, augment="flip", workers=args.workers, seed=seed
    )
    return TrainConfig(
        model=ModelConfig(backbone, AdapterConfig(spec=spec, routing=routing), tasks=tasks),
        data=data,
        single_task=StageConfig(steps=0, lr=1e-3),
        multi_task=StageConfig(steps=args.steps, lr=args.lr, warmup=25),
        batch_size=args.batch_size,
        eval_every=0,
        checkpoint_every=0,
        seed=seed,
    )


def pretrain_backbone(args: argparse.Namespace, out: Path) -> dict[str, torch.Tensor]:
    """Stage 1 once: the frozen base weights every row of every seed starts from (a resumed
    run reloads them)."""
    saved = out / "base.pt"
    if args.resume and saved.exists():
        return torch.load(saved, weights_only=True)
    config = base_config(args, TASK_NAMES, "none", "16/3/1/4", args.backbone_seed)
    config = replace(
        config,
        single_task=StageConfig(steps=args.backbone_steps, lr=1e-3, warmup=25),
        multi_task=StageConfig(steps=0, lr=1e-3),
    )
    torch.manual_seed(args.backbone_seed)
    model = ASEModel(config.model).train()
    base = base_parameter_names(model)  # before training: stages change requires_grad
    Trainer(config, out, Processes(), model).fit()
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if name in base}
    torch.save(weights, saved)
    return weights


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
    """Primary metrics on the same ``test`` scenes for every row and seed."""
    scenes = SyntheticScenes(args.size, args.eval_images, seed=args.test_seed, split="test")
    loader = eval_loader(scenes, args.size, model.config.tasks, batch_size=32)
    results = evaluate(model_predictor(model), loader, model.config.tasks, model.config.dataset)
    return primary(results)


def _folder(name: str) -> str:
    return name.replace(" ", "-").replace("/", "")


def run_seed(args, seed: int, base, done: dict, save) -> None:
    """Every row of one seed into ``done[str(seed)]``, saving after each row."""
    rows = done.setdefault(str(seed), {})
    out = args.out / f"seed-{seed}"
    if REFERENCES not in rows:
        reference: dict[str, float] = {}
        for task in TASK_NAMES:
            config = base_config(args, (task,), "lora", "16/3/1/4", seed)
            reference |= score(train_row(config, base, out / f"single-{task}"), args)
            print(f"seed {seed} single-task {task}: {reference[task]:.2f}", flush=True)
        rows[REFERENCES] = reference
        save()
    for name, (routing, spec) in VARIANTS.items():
        if name in rows:
            continue
        config = base_config(args, TASK_NAMES, routing, spec, seed)
        rows[name] = score(train_row(config, base, out / _folder(name)), args)
        print(f"seed {seed} {name}: {rows[name]}", flush=True)
        save()


def summarise(per_seed: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Mean and std over the seeds that finished every row; Δm per seed; ASE minus MoE."""
    complete = {s: rows for s, rows in per_seed.items() if len(rows) == len(VARIANTS) + 1}
    deltas = {
        s: {n: delta_m(v, rows[REFERENCES]) for n, v in rows.items()}
        for s, rows in complete.items()
    }
    names = [REFERENCES, *VARIANTS]
    summary = {}
    for name in names:
        series = {t: [complete[s][name][t] for s in complete] for t in TASK_NAMES}
        series["delta_m"] = [deltas[s][name] for s in complete]
        summary[name] = {key: _mean_std(values) for key, values in series.items()}
    minus = {
        f"{ase} - {MOE_ROW}": {
            s: {
                key: (deltas[s][ase] - deltas[s][MOE_ROW])
                if key == "delta_m"
                else complete[s][ase][key] - complete[s][MOE_ROW][key]
                for key in (*TASK_NAMES, "delta_m")
            }
            for s in complete
        }
        for ase in ASE_ROWS
    }
    return {"seeds": list(complete), "delta_m": deltas, "summary": summary, "ase_minus_moe": minus}


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std}


COLUMNS = ("semseg mIoU ↑", "parts mIoU ↑", "sal mIoU ↑", "normals mErr ↓", "edges odsF ↑")


def _cell(stats: dict[str, float | None]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.2f}" + ("" if stats["std"] is None else f" ± {stats['std']:.2f}")


def markdown(report: dict) -> str:
    summary, keys = report["summary"], (*TASK_NAMES, "delta_m")
    lines = [
        f"Mean ± std over seeds {', '.join(summary['seeds'])}:",
        "",
        "| model | " + " | ".join(COLUMNS) + " | Δm % |",
        "|---" * 7 + "|",
    ]
    for name, stats in summary["summary"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(stats[k]) for k in keys) + " |")
    lines += [
        "",
        "Δm % per seed:",
        "",
        "| model | " + " | ".join(summary["seeds"]) + " |",
        "|---" * (len(summary["seeds"]) + 1) + "|",
    ]
    for name in summary["summary"]:
        cells = " | ".join(f"{summary['delta_m'][s][name]:+.2f}" for s in summary["seeds"])
        lines.append(f"| {name} | {cells} |")
    for pair, by_seed in summary["ase_minus_moe"].items():
        lines += [
            "",
            f"{pair}, per seed:",
            "",
            "| seed | " + " | ".join(COLUMNS) + " | Δm % |",
            "|---" * 7 + "|",
        ]
        for seed, diff in by_seed.items():
            lines.append(f"| {seed} | " + " | ".join(f"{diff[k]:+.2f}" for k in keys) + " |")
    return "\n".join(lines)


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    )
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> dict:
    path = args.out / "ablation.json"
    earlier = json.loads(path.read_text()) if args.resume and path.exists() else {}
    per_seed: dict = earlier.get("per_seed", {})
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"per_seed": per_seed, "settings": settings, "commit": _commit()}
    clock, before = time.perf_counter(), earlier.get("seconds", 0.0)

    def save() -> None:
        report["seconds"] = before + time.perf_counter() - clock
        report["summary"] = summarise(per_seed)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))

    base = pretrain_backbone(args, args.out / "backbone")
    for seed in args.seeds:
        run_seed(args, seed, base, per_seed, save)
    save()
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run each")
    parser.add_argument("--resume", action="store_true", help="keep the rows of OUT's JSON")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every row")
    parser.add_argument("--backbone-steps", type=int, default=400, help="stage-1 steps, once")
    parser.add_argument("--backbone-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=64, help="image size (8x8 patches)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--test-seed", type=int, default=0, help="the test scenes' seed")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # 1: oversubscribed threads crawl on a shared machine
    report = run(args)
    table = markdown(report)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)
    print(f"total {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
