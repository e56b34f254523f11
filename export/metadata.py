"""``metadata.json`` from a checkpoint's config and the task registry, in the schema of
``export/contract.py`` (docs/architecture.md, contract 3), whose rules it is validated against
before it is written: an export that the server would refuse fails at export time.

Deterministic on purpose: no timestamps, keys in the schema's order, the version derived from
the checkpoint's hash, so the same checkpoint always gives a byte-identical file.

Torch-free, like the contract: it needs the config and the task registry only.
"""

from __future__ import annotations

from pathlib import Path

from export.contract import (
    GRAPH_INPUTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROUTER_OUTPUTS,
    SCHEMA_VERSION,
    AdapterInfo,
    GraphInfo,
    InputInfo,
    IoInfo,
    Metadata,
    SourceInfo,
    TaskInfo,
    TrainingInfo,
    file_sha256,
)
from model.config import ModelConfig
from model.tasks import DATASETS, TASK_NAMES, TASKS

INT8_SCHEME = (
    "dynamic: int8 weights in a 7-bit range per output channel, uint8 activations per tensor"
)


SCENES = "synthetic scenes (model/data/synthetic.py): all five tasks, exact labels"
TRAINING = {
    "synthetic": TrainingInfo(
        data=(SCENES,),
        note="Trained on synthetic scenes only (the project's demo): on real photos its maps "
        "are rough. Export a model trained on your data to serve it instead.",
    ),
    "scenes_and_photos": TrainingInfo(
        data=(
            SCENES,
            "real photos from Debian and PyPI packages (docs/photos.md), labelled by teacher "
            "models: saliency (ISNet), edges (HED), person and body parts (MediaPipe), "
            "semseg's person, animal, vehicle and food where a source names them",
        ),
        photo_tasks=("semseg", "parts", "saliency", "edges"),
        note="Trained on synthetic scenes and real photos labelled by teacher models "
        "(docs/model_card.md). On photos, edges are its best map and saliency is rough; semseg's "
        "person class and the body parts find people who fill much of the photo, coarsely, "
        "and miss small or distant ones; its other photo classes (animal, vehicle, food) are "
        "often wrong. Surface normals were learned from synthetic scenes only: on photos "
        "they are shading cues, not measurements.",
    ),
    "pascal_context": TrainingInfo(
        data=("PASCAL-Context (the PASCAL_MT multi-task benchmark)",),
        photo_tasks=("semseg", "parts", "saliency", "normals", "edges"),
        note="Trained on PASCAL-Context photos: the benchmark's 20 VOC classes and its "
        "distilled saliency and normals labels.",
    ),
}
"""What a model of each dataset learned from (``metadata.json``'s ``training``)."""


def output_names(config: ModelConfig) -> list[str]:
    """Graph outputs in contract order: the model's tasks by id, then the router statistics."""
    return [*config.tasks, *ROUTER_OUTPUTS]


def adapter_info(config: ModelConfig) -> AdapterInfo:
    """Variants without an expert bank report ``experts: 0``, no k/shared, and the rank of
    their single adapter (0 for ``none``)."""
    adapters, backbone, routing = config.adapters, config.backbone, config.adapters.routing
    bank = routing.has_experts
    single_rank = adapters.active_rank if routing.has_adapter else 0
    return AdapterInfo(
        spec=adapters.spec,
        experts=adapters.experts if bank else 0,
        k=adapters.k if bank else 0,
        shared=adapters.shared if bank else 0,
        rank=adapters.rank if bank else single_rank,
        routing=routing,
        layers=backbone.depth,
        tokens_per_stream=backbone.tokens,
        shared_experts=tuple(range(adapters.routed, adapters.experts)) if bank else (),
    )


def task_infos(config: ModelConfig) -> tuple[TaskInfo, ...]:
    """The model's tasks as the registry describes them for its dataset."""
    dataset = DATASETS[config.dataset]
    return tuple(
        TaskInfo(
            name=name,
            id=TASK_NAMES.index(name),
            kind=TASKS[name].kind,
            channels=dataset.channels(name),
            classes=dataset.classes(name),
            palette=dataset.palette(name),
        )
        for name in config.tasks
    )


def build_metadata(
    config: ModelConfig,
    *,
    name: str,
    graphs: dict[str, Path],
    provider_graph: dict[str, str],
    precision: str,
    opset: int,
    source: SourceInfo,
    exporter: dict[str, str],
    quantized_from: str | None = None,
) -> Metadata:
    """The metadata of a model directory; ``graphs`` maps dispatch mode -> written graph file
    (hashed here); ``quantized_from``: the fp32 graph the ``int8`` graph was made from."""
    size = config.backbone.image_size
    return Metadata(
        schema_version=SCHEMA_VERSION,
        name=name,
        version=version_string(source),
        tasks=task_infos(config),
        dataset=config.dataset,
        input=InputInfo(height=size, width=size, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        adapters=adapter_info(config),
        graphs={mode: graph_info(mode, path, quantized_from) for mode, path in graphs.items()},
        provider_graph=dict(provider_graph),
        precision=precision,
        opset=opset,
        io=IoInfo(inputs=GRAPH_INPUTS, outputs=tuple(output_names(config))),
        source=source,
        exporter=dict(exporter),
        training=TRAINING.get(config.dataset),
    )


def graph_info(mode: str, path: Path, quantized_from: str | None = None) -> GraphInfo:
    """One ``graphs`` entry; the int8 graph also names its precision, scheme and fp32 source."""
    if mode != "int8":
        return GraphInfo(file=path.name, sha256=file_sha256(path))
    return GraphInfo(
        file=path.name,
        sha256=file_sha256(path),
        precision="int8",
        quantization=INT8_SCHEME,
        quantized_from=quantized_from,
    )


def version_string(source: SourceInfo) -> str:
    """``<step>-<sha8>``: the same checkpoint always gets the same version (no clock)."""
    return f"{source.step}-{(source.checkpoint_sha256 or '0' * 64)[:8]}"
