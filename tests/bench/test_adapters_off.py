"""Switching a model's FFN-side adapters off, and the tool that scores a checkpoint both ways."""

import json
from dataclasses import replace

import pytest
import torch

from bench.ablation_photos import METRICS
from bench.adapters_off import main, switch_off_adapters
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import AdapterConfig
from model.presets import tiny
from model.trainer import new_model


def randomise_adapters(model) -> None:
    """Give every adapter a non-zero B (a fresh one starts at 0, i.e. already off)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for block in model.backbone.blocks:
            getattr(block.adapter, "experts", block.adapter).B.normal_(std=0.5)


def tiny_model(routing: str):
    config = tiny()
    spec = {"moe": "8/3/0/2", "lora": "16/3/1/4"}.get(routing, config.model.adapters.spec)
    model = replace(config.model, adapters=AdapterConfig(spec=spec, routing=routing))
    return new_model(replace(config, model=model), None).eval()


def adapter_outputs(model, images) -> tuple[dict, list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    hooks = [
        block.adapter.register_forward_hook(
            lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
        for block in model.backbone.blocks
    ]
    with torch.no_grad():
        maps = model.forward_tasks(images, model.config.tasks).maps
    for hook in hooks:
        hook.remove()
    return maps, seen


@pytest.mark.parametrize("routing", ["ase", "moe", "lora"])
@pytest.mark.parametrize("merged", [False, True], ids=["training-form", "merged"])
def test_switched_off_adapters_add_nothing_and_change_the_maps(routing, merged):
    model = tiny_model(routing)
    randomise_adapters(model)
    model = model.merge() if merged else model
    images = torch.randn(2, 3, *(2 * [model.config.backbone.image_size]))
    before, outputs = adapter_outputs(model, images)
    assert all(out.abs().max() > 0 for out in outputs)
    assert switch_off_adapters(model) == len(model.backbone.blocks)
    after, outputs = adapter_outputs(model, images)
    assert len(outputs) == len(model.backbone.blocks)
    assert all(torch.count_nonzero(out) == 0 for out in outputs)
    assert any(not torch.allclose(before[task], after[task]) for task in before)


def test_a_model_without_adapters_has_none_to_switch_off():
    assert switch_off_adapters(tiny_model("none")) == 0


def test_scores_each_checkpoint_with_its_adapters_on_and_off(tmp_path, photo_checkpoint, capsys):
    checkpoint, root = photo_checkpoint
    model, payload = load_checkpoint(checkpoint)
    randomise_adapters(model)
    extra = {key: payload[key] for key in ("train", "stage")}
    trained = save_checkpoint(tmp_path / "adapted.pt", model, extra=extra)
    scores = tmp_path / "scores.json"
    argv = [str(trained), "--data", str(root), "--scenes", "2", "--json", str(scores)]
    rows = main(argv)
    assert set(rows) == {str(trained)}
    assert {state: set(values) for state, values in rows[str(trained)].items()} == {
        "on": set(METRICS),
        "off": set(METRICS),
    }
    assert json.loads(scores.read_text()) == rows
    table = capsys.readouterr().out.splitlines()
    assert [line.split("|")[2].strip() for line in table[2:]] == ["on", "off"]
