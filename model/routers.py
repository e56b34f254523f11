"""Router figures: how each task's routers use the experts over a dataset split.

    python -m model.routers demo/ckpt.pt --data synthetic --split test --out docs/routers
    python -m model.routers ckpt.pt --data /data/PASCAL_MT --split val --count 0 --out figs

Runs the model (eval mode) over the split, every image through every task's stream, and
counts per task, layer and expert the tokens the expert processed (``expert_tokens``), and
per task and layer the summed shared-expert gate weight (``shared_gate_mass``). It writes:

- ``<task>.png``: the layer x expert heatmap of the share of the task's tokens each expert
  processed (a routed expert picked for every token scores 1; uniform routing scores
  k/(N-S); shared experts, always active, score 1), and beside it the mean shared-expert
  gate weight per token in each layer (ASE's adaptive share; 0 without shared experts);
- ``tasks.png``: per layer, the tasks x routed experts dispatch shares (each row sums to 1:
  which experts each task prefers), and the overlap of two tasks' dispatch distributions,
  ``sum_e min(p_t(e), p_u(e))`` (1: the same experts in the same proportions, 0: disjoint),
  averaged over layers and per layer;
- ``routers.json``: every number drawn, and what it was measured on.
Expert indices: routed ``0 .. N-S-1``, shared ``N-S .. N-1`` (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: files only, no display or global figures
from torch.utils.data import DataLoader

from model.cli import add_split_arguments, run, split_from_args
from model.evaluate import eval_loader
from model.model import ASEModel


@dataclass
class RouterUsage:
    tasks: tuple[str, ...]
    expert_tokens: np.ndarray  # (T, L, N) tokens each expert processed, summed over the split
    shared_gate_mass: np.ndarray  # (T, L) summed shared gate weight
    stream_tokens: np.ndarray  # (T,) tokens through each layer per task (images x tokens)
    routed: int  # N-S
    images: int

    @property
    def token_share(self) -> np.ndarray:
        """(T, L, N) share of the task's tokens each expert processed."""
        return self.expert_tokens / self.stream_tokens[:, None, None]

    @property
    def dispatch_share(self) -> np.ndarray:
        """(T, L, N-S) share of the task's routed dispatches per routed expert (rows sum to 1)."""
        routed = self.expert_tokens[..., : self.routed]
        return routed / np.maximum(routed.sum(axis=-1, keepdims=True), 1e-12)

    @property
    def shared_gate_share(self) -> np.ndarray:
        """(T, L) mean shared-expert gate weight per token."""
        return self.shared_gate_mass / self.stream_tokens[:, None]

    def overlap(self) -> np.ndarray:
        """(L, T, T) sum over routed experts of min(p_t, p_u) of the dispatch shares."""
        p = self.dispatch_share.transpose(1, 0, 2)  # (L, T, N-S)
        return np.minimum(p[:, :, None, :], p[:, None, :, :]).sum(axis=-1)


@torch.no_grad()
def measure(model: ASEModel, loader: DataLoader) -> RouterUsage:
    """Every image of ``loader`` through every task of ``model``; counts summed per task."""
    config = model.config
    if not config.adapters.has_experts:
        raise ValueError(f"routing {config.adapters.routing!r} has no routers to draw")
    tasks, depth = config.tasks, config.backbone.depth
    experts = config.adapters.experts
    tokens = np.zeros((len(tasks), depth, experts))
    mass = np.zeros((len(tasks), depth))
    images = 0
    for batch, _ in loader:
        out = model.forward_tasks(batch, tasks)
        per_image = out.expert_tokens.view(batch.shape[0], len(tasks), depth, experts)
        tokens += per_image.sum(dim=0).double().numpy()  # image-major streams: (T, L, N)
        mass += out.shared_gate_mass.view(batch.shape[0], len(tasks), depth).sum(0).double().numpy()
        images += batch.shape[0]
    stream_tokens = np.full(len(tasks), float(images * config.backbone.tokens))
    return RouterUsage(tasks, tokens, mass, stream_tokens, config.adapters.routed, images)


def _experts_axis(axis, usage: RouterUsage, experts: int) -> None:
    axis.set_xlabel("expert")
    axis.set_xticks(range(experts))
    axis.tick_params(axis="x", labelsize=6)
    if experts > usage.routed:  # a line between routed and shared experts
        axis.axvline(usage.routed - 0.5, color="white", linewidth=2)


def draw_task(usage: RouterUsage, index: int, title: str, path: Path) -> None:
    """One task: layer x expert token share, and the shared gate share per layer."""
    share, gate = usage.token_share[index], usage.shared_gate_share[index]  # (L, N), (L,)
    layers, experts = share.shape
    figure = Figure(figsize=(4.5 + 0.32 * experts, 1.4 + 0.4 * layers), layout="constrained")
    heat, bars = figure.subplots(1, 2, gridspec_kw={"width_ratios": [experts, 6]})
    image = heat.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    heat.set_ylabel("layer")
    heat.set_yticks(range(layers))
    _experts_axis(heat, usage, experts)
    shared = " (right of the line: shared)" if experts > usage.routed else ""
    heat.set_title(f"{usage.tasks[index]}: share of tokens per expert{shared}", fontsize=9)
    figure.colorbar(image, ax=heat, fraction=0.05)
    bars.barh(range(layers), gate, color="tab:orange")
    for layer, value in enumerate(gate):
        bars.text(value, layer, f" {value:.3f}", va="center", fontsize=7)
    bars.set_ylim(layers - 0.5, -0.5)  # layer 0 on top, as in the heatmap
    bars.set_yticks(range(layers))
    # The axis fits the values (they can be far below 1); the printed numbers keep the scale.
    bars.set_xlim(0, max(0.05, float(gate.max()) * 1.5))
    bars.set_xlabel("mean gate / token")
    bars.set_title("shared experts' gate", fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


def draw_tasks(usage: RouterUsage, title: str, path: Path) -> None:
    """Tasks compared: dispatch shares per layer, and their overlap."""
    shares, overlap = usage.dispatch_share, usage.overlap()  # (T, L, N-S), (L, T, T)
    layers, names = shares.shape[1], usage.tasks
    columns = min(layers, 6)
    rows = -(-layers // columns)
    figure = Figure(figsize=(2.4 * columns, 2.1 * rows + 3.0), layout="constrained")
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[1] * rows + [1.6])
    peak = float(shares.max())
    for layer in range(layers):
        axis = figure.add_subplot(grid[layer // columns, layer % columns])
        image = axis.imshow(shares[:, layer], cmap="magma", vmin=0.0, vmax=peak, aspect="auto")
        axis.set_title(f"layer {layer}", fontsize=8)
        axis.set_yticks(range(len(names)), names if layer % columns == 0 else [], fontsize=7)
        axis.set_xticks(range(usage.routed))
        axis.tick_params(axis="x", labelsize=5)
    figure.colorbar(image, ax=figure.axes, fraction=0.02, label="dispatch share")
    mean = figure.add_subplot(grid[rows, : columns // 2])
    image = mean.imshow(overlap.mean(axis=0), cmap="Blues", vmin=0.0, vmax=1.0)
    mean.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    mean.set_yticks(range(len(names)), names, fontsize=7)
    for (row, column), value in np.ndenumerate(overlap.mean(axis=0)):
        colour = "white" if value > 0.6 else "black"
        mean.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    mean.set_title("dispatch overlap of two tasks, mean over layers", fontsize=8)
    per_layer = figure.add_subplot(grid[rows, columns // 2 :])
    pairs = np.triu_indices(len(names), k=1)
    per_layer.plot(range(layers), overlap[:, pairs[0], pairs[1]].mean(axis=1), marker="o")
    per_layer.set_ylim(0, 1.02)
    per_layer.set_xticks(range(layers))
    per_layer.set_xlabel("layer")
    per_layer.set_title("mean overlap of task pairs per layer", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


def report(usage: RouterUsage, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "images": usage.images,
        "tasks": list(usage.tasks),
        "routed_experts": list(range(usage.routed)),
        "shared_experts": list(range(usage.routed, usage.expert_tokens.shape[-1])),
        "per_task": {
            task: {
                "tokens_per_layer": float(usage.stream_tokens[i]),
                "token_share": usage.token_share[i].round(6).tolist(),  # [layer][expert]
                "dispatch_share": usage.dispatch_share[i].round(6).tolist(),
                "shared_gate_share": usage.shared_gate_share[i].round(6).tolist(),  # [layer]
            }
            for i, task in enumerate(usage.tasks)
        },
        "overlap_mean": usage.overlap().mean(axis=0).round(6).tolist(),  # [task][task]
        "overlap_per_layer": usage.overlap().round(6).tolist(),  # [layer][task][task]
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    add_split_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and JSON")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from model.checkpoint import load_checkpoint  # here: keeps `--help` fast

    args = _parser().parse_args(argv)
    model, payload = load_checkpoint(args.checkpoint)
    size = model.config.backbone.image_size
    source = split_from_args(args, size)
    # The model sees model-size images either way; "fixed" skips reading labels at full size.
    loader = eval_loader(source, size, model.config.tasks, args.batch_size, resolution="fixed")
    usage = measure(model, loader)
    adapters = model.config.adapters
    variant = f"{adapters.routing} {adapters.spec}, step {payload.get('step')}"
    title = f"{args.checkpoint} ({variant}), {args.data} {args.split}, {usage.images} images"
    args.out.mkdir(parents=True, exist_ok=True)
    for index, task in enumerate(usage.tasks):
        draw_task(usage, index, title, args.out / f"{task}.png")
    draw_tasks(usage, title, args.out / "tasks.png")
    meta = {
        "checkpoint": str(args.checkpoint),
        "step": payload.get("step"),
        "data": args.data,
        "split": args.split,
        "routing": adapters.routing,
        "spec": adapters.spec,
    }
    result = report(usage, meta)
    (args.out / "routers.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {len(usage.tasks) + 1} figures and routers.json to {args.out}")
    return result


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
