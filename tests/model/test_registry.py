"""The task registry and the typed configs: one source of facts, validated at construction."""

import pytest

from model.config import AdapterConfig, BackboneConfig, ModelConfig
from model.tasks import DATASETS, TASK_NAMES, TASKS, require_task, voc_palette


def test_registry_order_and_weights_are_the_benchmarks():
    assert TASK_NAMES == ("semseg", "parts", "saliency", "normals", "edges")
    assert [TASKS[t].loss_weight for t in TASK_NAMES] == [1.0, 2.0, 5.0, 10.0, 50.0]


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_dataset_channels_match_classes_and_palettes(dataset):
    spec = DATASETS[dataset]
    for task in TASK_NAMES:
        classes, palette = spec.classes(task), spec.palette(task)
        if TASKS[task].kind == "classes":
            assert len(classes) == len(palette) == spec.channels(task)
            assert len(set(palette)) == len(palette), "two classes share a colour"
        else:
            assert classes is None and palette is None
    assert spec.channels("normals") == 3 and spec.channels("edges") == 1


def test_voc_palette_known_entries():
    # Entries of the published VOC colour map: background, aeroplane, person (15).
    palette = voc_palette(21)
    assert palette[0] == (0, 0, 0) and palette[1] == (128, 0, 0) and palette[15] == (192, 128, 128)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="semseg, parts"):
        require_task("depth")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: AdapterConfig(spec="16/16/1/4"), "adapters.k"),
        (lambda: AdapterConfig(spec="4/1/5/4"), "adapters.shared"),
        (lambda: AdapterConfig(spec="16/3/1/0"), "adapters.rank"),
        (lambda: AdapterConfig(spec="16/3/1"), "adapters.spec"),
        (lambda: AdapterConfig(routing="dense"), "adapters.routing"),
        (lambda: AdapterConfig(spec="16/3/1/4", routing="moe"), "adapters.shared"),
        (lambda: BackboneConfig(image_size=100, patch_size=16), "backbone.image_size"),
        (lambda: BackboneConfig(width=100, heads=3), "backbone.width"),
        (lambda: ModelConfig(tasks=("semseg", "depth")), "tasks"),
        (lambda: ModelConfig(dataset="coco"), "dataset"),
    ],
)
def test_bad_configs_name_the_field(make, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        make()


def test_config_round_trip_and_canonical_task_order():
    config = ModelConfig(adapters=AdapterConfig(spec="32/6/2/2"), tasks=("edges", "semseg"))
    assert config.tasks == ("semseg", "edges")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**config.to_dict(), "extra": 1})


@pytest.mark.parametrize("spec", ["16/3/1/4", "32/6/2/2", "64/12/4/1"])
def test_paper_grid_keeps_active_rank(spec):
    adapters = AdapterConfig(spec=spec)
    assert adapters.active_rank == 16
    assert adapters.experts * adapters.rank == 64
