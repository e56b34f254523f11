"""How much a checkpoint's FFN-side adapters carry: the photo ablation's six scores
(``bench/ablation_photos.py``: saliency maxF, edge F and person IoU on the held-out photos,
semseg, parts and normals on synthetic test scenes) with the adapters as trained, and again
with every one switched off (its B matrix zeroed, so it adds nothing to its block).

    python -m bench.adapters_off demo/photo/ckpt.pt runs/ablation-photos-600/seed-0/*/ckpt.pt \
        --data /data/photos

docs/ablation.md ("Why ASE and MoE coincide") reads the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from bench.ablation_photos import METRICS, row_scores
from model.checkpoint import load_checkpoint
from model.model import ASEModel
from model.photo_eval import held_out, load_truth


def switch_off_adapters(model: ASEModel) -> int:
    """Zero the B matrix of every block's FFN-side adapter (an expert bank's, a single LoRA
    adapter's or a merged bank's): each then adds 0. Returns how many were switched off."""
    count = 0
    for block in model.backbone.blocks:
        adapter: nn.Module | None = getattr(block, "adapter", None)
        if adapter is None:
            continue
        with torch.no_grad():
            getattr(adapter, "experts", adapter).B.zero_()
        count += 1
    return count


def on_and_off(checkpoint: Path, truths: list, scenes: int) -> dict[str, dict[str, float]]:
    """The six scores of one checkpoint with its adapters on, then off."""
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    with torch.no_grad():
        on = row_scores(model, truths, scenes)
        if not switch_off_adapters(model):
            raise SystemExit(f"{checkpoint}: its blocks have no adapters to switch off")
        off = row_scores(model, truths, scenes)
    return {"on": on, "off": off}


def markdown(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| checkpoint | adapters | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for name, scores in rows.items():
        for state in ("on", "off"):
            cells = " | ".join(f"{scores[state][key]:.2f}" for key in METRICS)
            lines.append(f"| {name if state == 'on' else ''} | {state} | {cells} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="models with adapters")
    parser.add_argument("--data", type=Path, required=True, help="the photo set's root")
    parser.add_argument("--scenes", type=int, default=64, help="synthetic test scenes scored")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    truths = [load_truth(args.data, record) for record in held_out(args.data, "val")]
    rows = {str(path): on_and_off(path, truths, args.scenes) for path in args.checkpoints}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
