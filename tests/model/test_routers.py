"""The router figures CLI on a tiny checkpoint: PNGs, and JSON numbers that match what the
routers selected (counted here with hooks on the routers, not through the model's statistics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import save_checkpoint
from model.data import SyntheticScenes
from model.data.transforms import MultiTaskDataset, collate
from model.routers import main
from model.tasks import TASK_NAMES
from tests.model.tiny import tiny_model

COUNT = 3


def _counted_by_hooks(model, images):
    """(T, L, N-S) routed picks and (T, L) shared gate mass per task, from the routers' outputs."""
    picks, mass = [], []

    def record(_module, _args, out) -> None:  # returns None: the output is left as it is
        picks.append(out.selected)
        mass.append(out.weights)

    hooks = [block.adapter.router.register_forward_hook(record) for block in model.backbone.blocks]
    with torch.no_grad():
        model.forward_tasks(images, TASK_NAMES)
    for hook in hooks:
        hook.remove()
    tasks = len(TASK_NAMES)
    routed = picks[0].shape[-1]
    per_layer = [p.view(images.shape[0], tasks, *p.shape[1:]).sum(dim=(0, 2)) for p in picks]
    shared = [w[..., routed:].reshape(images.shape[0], tasks, -1).sum(dim=(0, 2)) for w in mass]
    return torch.stack(per_layer, dim=1).numpy(), torch.stack(shared, dim=1).numpy()


def test_cli_draws_every_task_and_reports_what_the_routers_did(tmp_path):
    model = tiny_model("ase", spec="8/2/2/2").eval()  # 6 routed experts, k=2, 2 shared
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, step=2)
    result = main(
        [
            str(checkpoint),
            "--data",
            "synthetic",
            "--split",
            "val",
            "--count",
            str(COUNT),
            "--out",
            str(tmp_path / "figs"),
        ]
    )
    for name in (*TASK_NAMES, "tasks"):
        with Image.open(tmp_path / "figs" / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100
    written = json.loads((tmp_path / "figs" / "routers.json").read_text())
    assert written == json.loads(json.dumps(result)) and written["images"] == COUNT
    assert written["shared_experts"] == [6, 7]

    scenes = SyntheticScenes(32, COUNT, seed=0, split="val")
    images, _ = collate([MultiTaskDataset(scenes, tasks=())[i] for i in range(COUNT)])
    picks, shared_mass = _counted_by_hooks(model, images)
    tokens = COUNT * 16  # 32 px, patch 8: 16 tokens per stream and layer
    for t, task in enumerate(TASK_NAMES):
        numbers = written["per_task"][task]
        share = np.array(numbers["token_share"])  # (L, N)
        np.testing.assert_allclose(share[:, :6], picks[t] / tokens, atol=1e-6)
        np.testing.assert_allclose(share[:, 6:], 1.0)  # shared experts see every token
        np.testing.assert_allclose(share[:, :6].sum(axis=1), 2.0, atol=1e-5)  # k picks a token
        np.testing.assert_allclose(np.array(numbers["dispatch_share"]).sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(numbers["shared_gate_share"], shared_mass[t] / tokens, atol=1e-5)
    overlap = np.array(written["overlap_mean"])
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-5)
    np.testing.assert_allclose(overlap, overlap.T)


def test_variants_without_routers_are_refused(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", tiny_model("lora"))
    with pytest.raises(ValueError, match="no routers"):
        main([str(checkpoint), "--data", "synthetic", "--count", "1", "--out", str(tmp_path)])
