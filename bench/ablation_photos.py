"""The three-seed ablation of docs/ablation.md, repeated from the real-feature backbone on the
photo tasks: ``lora``, ``moe 16/4/0/4`` and ``ase 16/3/1/4`` (``--variants`` for more), each
trained from the same frozen base weights with the same budget, three seeds.

    python -m bench.ablation_photos demo/photo/ckpt.pt --data /data/photos --out runs/ab-photos

Protocol:
  1. the base weights (everything stage 2 keeps frozen: the hybrid's EfficientNet-Lite and its
     projection, position embedding, the blocks' linear layers and norms) are the checkpoint's,
     i.e. the served model's after its stage 1; every row of every seed starts from them;
  2. for each seed s (shared by all rows, so rows compare pair by pair) each variant trains
     LoRA, task embeddings, routers, experts and heads for ``--steps`` steps on the checkpoint's
     recipe (scenes and photos in every batch), initial weights and batches drawn from s;
  3. every row is scored by ``model/photo_eval.py`` on the held-out photos (saliency maxF, edge
     F at 2 px, person IoU) and by ``model/evaluate.py`` on ``--scenes`` held-out synthetic test
     scenes (semseg and parts mIoU, normals mean angle: the tasks photos cannot score).
Δm of a row and seed is against that seed's ``lora`` row over these six numbers (normals error
counts negatively); without a ``lora`` row there is no Δm, and without both ase 16/3/1/4 and
moe 16/4/0/4 no per-seed difference. ``ablation.json`` is rewritten after every row;
``--resume`` keeps rows. Rows need nothing from each other: ``--jobs N`` trains N side by side,
one process each (``--threads`` threads apiece; a row at the served budget, 2400 steps, takes
about 1.8 GB and 55 min of one core of this CPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch

from bench.ablation import _commit, _mean_std
from model.checkpoint import load_checkpoint
from model.config import AdapterConfig
from model.data import SyntheticScenes
from model.distributed import Processes
from model.evaluate import eval_loader, evaluate, model_predictor, primary
from model.metrics import delta_m
from model.model import ASEModel
from model.photo_eval import held_out, load_truth, model_photo_predictor, score
from model.presets import StageConfig, TrainConfig
from model.stages import base_parameter_names
from model.trainer import Trainer

VARIANTS = {  # row name -> (routing, N/k/S/r)
    "lora": ("lora", "16/3/1/4"),
    "moe 16/4/0/4": ("moe", "16/4/0/4"),
    "ase 16/3/1/4": ("ase", "16/3/1/4"),
    "ase 32/6/2/2": ("ase", "32/6/2/2"),
}
REFERENCE = "lora"  # Δm is against it
PAIR = ("ase 16/3/1/4", "moe 16/4/0/4")  # the paper's question: ASE minus MoE
METRICS = ("saliency_maxF", "edge_F", "person_IoU", "semseg", "parts", "normals")
LOWER_IS_BETTER = ("normals",)
SCENE_TASKS = ("semseg", "parts", "normals")  # scored on synthetic test scenes


def row_config(recipe: TrainConfig, args, routing: str, spec: str, seed: int) -> TrainConfig:
    model = replace(recipe.model, adapters=AdapterConfig(spec=spec, routing=routing))
    return replace(
        recipe,
        model=model,
        data=replace(recipe.data, root=str(args.data), val_size=0),
        single_task=StageConfig(steps=0, lr=1e-3),
        multi_task=replace(recipe.multi_task, steps=args.steps, warmup=25),
        eval_every=0,
        checkpoint_every=0,
        seed=seed,
    )


def train_row(config: TrainConfig, base: dict[str, torch.Tensor], out: Path) -> ASEModel:
    torch.manual_seed(config.seed)
    model = ASEModel(config.model).train()
    buffers = {name for name, _ in model.named_buffers()}
    missing = set(base_parameter_names(model)) ^ (set(base) - buffers)
    if missing:
        raise ValueError(f"base weights do not fit this variant: {sorted(missing)}")
    model.load_state_dict(base, strict=False)
    Trainer(config, out, Processes(), model).fit()
    return model.eval()


def row_scores(model: ASEModel, truths, scenes: int) -> dict[str, float]:
    """The three photo scores and the three synthetic ones (``METRICS``, on ``scenes`` test
    scenes)."""
    photos = score(model_photo_predictor(model), truths)
    size = model.config.backbone.image_size
    test_scenes = SyntheticScenes(size, scenes, seed=0, split="test")
    loader = eval_loader(test_scenes, size, SCENE_TASKS, batch_size=16)
    synthetic = evaluate(model_predictor(model), loader, SCENE_TASKS, model.config.dataset)
    return {**{k: photos[k] for k in METRICS[:3]}, **primary(synthetic)}


def frozen_base(checkpoint: Path) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """The recipe the checkpoint was trained with and its base weights (CNN buffers too)."""
    model, payload = load_checkpoint(checkpoint)
    recipe = TrainConfig.from_dict(payload["train"])
    base = base_parameter_names(ASEModel(recipe.model))
    state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    return recipe, {k: v for k, v in state.items() if k in base or k in buffers}


def _delta(row: dict[str, float], reference: dict[str, float]) -> float:
    """Δm over the metrics whose reference is not 0 (a relative change from 0 means nothing)."""
    kept = [key for key in METRICS if reference[key]]
    return delta_m({k: row[k] for k in kept}, {k: reference[k] for k in kept}, LOWER_IS_BETTER)


def _column(complete: dict, deltas: dict, name: str, key: str) -> list[float]:
    if key == "delta_m":
        return [deltas[seed][name] for seed in deltas]
    return [rows[name][key] for rows in complete.values()]


def _ase_minus_moe(complete: dict, deltas: dict) -> dict[str, dict[str, float]]:
    ase, moe = PAIR
    differences = {}
    for seed, rows in complete.items():
        differences[seed] = {key: rows[ase][key] - rows[moe][key] for key in METRICS}
        if seed in deltas:
            differences[seed]["delta_m"] = deltas[seed][ase] - deltas[seed][moe]
    return differences


def summarise(per_seed: dict[str, dict[str, dict[str, float]]], names: list[str]) -> dict:
    """Mean ± std of every row over the seeds that have all ``names``; Δm only where ``lora``
    is among them, ASE minus MoE per seed only where both are."""
    seeds = sorted(per_seed, key=int)
    complete = {s: per_seed[s] for s in seeds if set(names) <= set(per_seed[s])}
    deltas = {}
    if REFERENCE in names:
        deltas = {
            s: {n: _delta(rows[n], rows[REFERENCE]) for n in names} for s, rows in complete.items()
        }
    keys = (*METRICS, "delta_m")
    summary = {
        name: {key: _mean_std(_column(complete, deltas, name, key)) for key in keys}
        for name in names
    }
    pair = _ase_minus_moe(complete, deltas) if set(PAIR) <= set(names) else {}
    return {"seeds": list(complete), "delta_m": deltas, "summary": summary, "ase_minus_moe": pair}


def score_row(args: argparse.Namespace, seed: int, name: str) -> dict[str, float]:
    """Train one row (variant ``name``, ``seed``) from the checkpoint's frozen base and score it.
    A row needs nothing from another, so ``--jobs`` runs this in processes of their own."""
    torch.set_num_threads(args.threads)
    recipe, base = frozen_base(args.checkpoint)
    truths = [load_truth(args.data, r) for r in held_out(args.data, "val")]
    config = row_config(recipe, args, *VARIANTS[name], seed)
    folder = args.out / f"seed-{seed}" / name.replace(" ", "-").replace("/", "")
    return row_scores(train_row(config, base, folder), truths, args.scenes)


def _scored_rows(args: argparse.Namespace, pending: list[tuple[str, str]], work=score_row):
    """Yield ``(seed, name, scores)`` as each pending row finishes: in this process one after
    the other, or ``--jobs`` rows side by side (spawned: a forked torch can hang). Side by side,
    a row that fails does not stop the others (each can be an hour of training): they finish
    and are yielded, then the failures are raised together."""
    if args.jobs == 1:
        for seed, name in pending:
            yield seed, name, work(args, int(seed), name)
        return
    failures = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {pool.submit(work, args, int(s), n): (s, n) for s, n in pending}
        for future in as_completed(futures):
            seed, name = futures[future]
            try:
                scores = future.result()
            except Exception as error:  # reported below, once the other rows are done
                failures.append(f"seed {seed} {name}: {type(error).__name__}: {error}")
                continue
            yield seed, name, scores
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(pending)} rows failed (the others are saved; --resume "
            "trains only what is missing): " + "; ".join(failures)
        )


def run(args: argparse.Namespace) -> dict:
    path = args.out / "ablation.json"
    earlier = json.loads(path.read_text()) if args.resume and path.exists() else {}
    per_seed: dict = earlier.get("per_seed", {})
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"per_seed": per_seed, "settings": settings, "commit": _commit()}
    clock, before = time.perf_counter(), earlier.get("seconds", 0.0)
    pending = [
        (str(seed), name)
        for seed in args.seeds
        for name in args.variants
        if name not in per_seed.get(str(seed), {})
    ]
    for seed, name, scores in _scored_rows(args, pending):
        per_seed.setdefault(seed, {})[name] = scores
        print(f"seed {seed} {name}: {scores}", flush=True)
        report["seconds"] = before + time.perf_counter() - clock
        report["summary"] = summarise(per_seed, args.variants)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
    return report


COLUMNS = (
    "sal maxF ↑",
    "edge F ↑",
    "person IoU ↑",
    "scenes semseg ↑",
    "scenes parts ↑",
    "normals mErr ↓",
)  # one per METRICS entry


def _cell(stats: dict[str, float | None]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.2f}" + ("" if stats["std"] is None else f" ± {stats['std']:.2f}")


def _difference(diff: dict[str, float], key: str) -> str:
    return f"{diff[key]:+.2f}" if key in diff else "-"


def markdown(summary: dict) -> str:
    keys = (*METRICS, "delta_m")
    against = "Δm against lora, per seed" if summary["delta_m"] else "no lora row, so no Δm"
    lines = [
        f"Mean ± std over seeds {', '.join(summary['seeds'])} ({against}):",
        "",
        "| model | " + " | ".join(COLUMNS) + " | Δm % |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, stats in summary["summary"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(stats[k]) for k in keys) + " |")
    if summary["ase_minus_moe"]:
        lines += ["", "ase 16/3/1/4 minus moe 16/4/0/4, per seed:", ""]
        lines += ["| seed | " + " | ".join(COLUMNS) + " | Δm % |", "|---" * (len(keys) + 1) + "|"]
    for seed, diff in summary["ase_minus_moe"].items():
        lines.append(f"| {seed} | " + " | ".join(_difference(diff, k) for k in keys) + " |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the photo model: its base weights, recipe")
    parser.add_argument("--data", type=Path, required=True, help="the photo set's root")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation-photos"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["lora", "moe 16/4/0/4", "ase 16/3/1/4"],
        choices=list(VARIANTS),
    )
    parser.add_argument("--steps", type=int, default=300, help="stage-2 steps of every row")
    parser.add_argument("--scenes", type=int, default=64, help="synthetic test scenes scored")
    parser.add_argument("--resume", action="store_true", help="keep the rows of OUT's JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each row")
    parser.add_argument(
        "--jobs", type=_positive, default=1, help="rows trained side by side, one process each"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    report = run(args)
    table = markdown(report["summary"])
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)
    print(f"total {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
