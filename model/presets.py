"""Training configs: typed, validated dataclasses and the named presets of ``model/train.py``.

A run has two stages (the paper starts from a *single-task* pretrained ViT, which does not
exist here): ``single_task`` trains the backbone's base weights (normally frozen: patch and
position embeddings, norms, linear layers) and one task's head on that task alone; then
``multi_task`` freezes them and trains what the paper trains: LoRA, task embeddings, routers,
experts and every head. Step numbers run across both stages (stage 2 starts where stage 1
ended), so one ``step`` in a checkpoint says where a resumed run stands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from model.config import AdapterConfig, BackboneConfig, ModelConfig, RouterLossConfig
from model.data.mixed import FULL_VIEW
from model.efficientnet import STRIDE16_STAGES
from model.losses import FIXED_POSITIVE_WEIGHT
from model.tasks import TASK_NAMES, TASKS

AUGMENTATIONS = ("benchmark", "flip", "none")
"""``benchmark``: scale 0.5-2, crop, flip, photometric (PASCAL recipe); ``flip``: horizontal
flip only (synthetic scenes are unlimited, so they need no more); ``none``. Mixed data
(``scenes_and_photos``) applies it to the scenes; its photos always take
``model.data.mixed.PhotoCrop`` (random scale and crop of the camera-size photo)."""
DATASETS = ("synthetic", "pascal_context", "scenes_and_photos")


def _fail(field_name: str, message: str) -> None:
    raise ValueError(f"{field_name}: {message}")


@dataclass(frozen=True)
class DataConfig:
    # "synthetic", "pascal_context" (``root``: a PASCAL_MT tree) or "scenes_and_photos"
    # (synthetic scenes mixed with the photo set at ``root``, ``model/data/mixed.py``)
    dataset: str = "synthetic"
    root: str | None = None
    val_size: int = 64  # synthetic: held-out scenes evaluated; PASCAL: 0 = the whole split
    seed: int = 0  # synthetic scenes' seed (train and val splits never overlap)
    augment: str = "flip"
    workers: int = 1
    photos_per_batch: int = 0  # scenes_and_photos: photos in every batch, scenes the rest
    # scenes_and_photos (``model/data/mixed.py``): share of the crops of photos with nobody in
    # them that get a training photo's person pasted on, and whether their parts are labelled
    # background (else skipped)
    paste_people: float = 0.0
    nobody_parts: bool = False
    # scenes_and_photos: share of photo crops turned greyscale (black-and-white photos)
    grey_photos: float = 0.0
    # scenes_and_photos: share of photo crops that are the whole photo (the served view)
    full_views: float = FULL_VIEW
    # scenes_and_photos: the photos' saliency label is ISNet's probability (a soft target)
    # rather than the probability binarised at 0.5
    soft_saliency: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            _fail("data.dataset", f"expected one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if (self.photos_per_batch > 0) != (self.dataset == "scenes_and_photos"):
            _fail("data.photos_per_batch", "> 0 exactly when the dataset is scenes_and_photos")
        if self.augment not in AUGMENTATIONS:
            _fail("data.augment", f"unknown {self.augment!r}; known: {', '.join(AUGMENTATIONS)}")
        if self.val_size < 0 or self.workers < 0:
            _fail("data", "val_size and workers must be >= 0")
        for name in ("paste_people", "grey_photos", "full_views"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(f"data.{name}", f"a share in [0, 1], got {getattr(self, name)}")
        photos = self.dataset == "scenes_and_photos"
        photo_options = (self.paste_people, self.nobody_parts, self.grey_photos, self.soft_saliency)
        if (any(photo_options) or self.full_views != FULL_VIEW) and not photos:
            options = "paste_people, nobody_parts, grey_photos, soft_saliency and full_views"
            _fail("data", f"{options} need the scenes_and_photos dataset")


@dataclass(frozen=True)
class StageConfig:
    steps: int
    lr: float
    warmup: int = 50  # linear warm-up steps, then cosine decay to ``lr * 0.01``

    def __post_init__(self) -> None:
        if self.steps < 0 or self.warmup < 0:
            _fail("stage", f"steps and warmup must be >= 0, got {self.steps}, {self.warmup}")
        if self.lr <= 0:
            _fail("stage.lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    single_task: StageConfig = field(default_factory=lambda: StageConfig(300, 1e-3))
    single_task_name: str = "semseg"  # the task the backbone is trained on in stage 1
    multi_task: StageConfig = field(default_factory=lambda: StageConfig(1000, 1e-3))
    batch_size: int = 16  # per process
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 250  # steps; 0: only at the end
    checkpoint_every: int = 250
    seed: int = 0
    # Balanced BCE's positive weight per probability task, fixed; a task not named weighs
    # positives by its own map's share of negatives (model/losses.py).
    positive_weights: dict[str, float] = field(default_factory=lambda: dict(FIXED_POSITIVE_WEIGHT))
    # A hybrid's last EfficientNet stages trained with the base weights in the single-task
    # stage, at ``cnn_lr_scale`` of its learning rate (ImageNet features adapted, not replaced)
    tuned_cnn_stages: int = 0
    cnn_lr_scale: float = 0.1

    def __post_init__(self) -> None:
        if self.single_task_name not in TASK_NAMES:
            _fail("single_task_name", f"unknown task {self.single_task_name!r}")
        if self.single_task.steps and self.single_task_name not in self.model.tasks:
            _fail("single_task_name", f"{self.single_task_name!r} is not a task of the model")
        if self.data.dataset != self.model.dataset:
            _fail(
                "data.dataset", f"{self.data.dataset!r} but the model's is {self.model.dataset!r}"
            )
        if self.batch_size < 1:
            _fail("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.data.photos_per_batch > self.batch_size:
            _fail("data.photos_per_batch", f"more than the batch of {self.batch_size}")
        if min(self.eval_every, self.checkpoint_every, self.grad_clip, self.weight_decay) < 0:
            _fail("train", "eval_every, checkpoint_every, grad_clip, weight_decay must be >= 0")
        for task, weight in self.positive_weights.items():
            if task not in TASKS or TASKS[task].kind != "probability":
                _fail("positive_weights", f"{task!r} is not a probability task")
            if not 0.0 < weight < 1.0:
                _fail("positive_weights", f"{task}: expected a weight in (0, 1), got {weight}")
        if self.tuned_cnn_stages and self.model.backbone.embed == "patch":
            _fail("tuned_cnn_stages", "only a hybrid backbone has a CNN to tune")
        if not 0 <= self.tuned_cnn_stages <= STRIDE16_STAGES or self.cnn_lr_scale <= 0:
            expected = f"0-{STRIDE16_STAGES} stages and a learning-rate scale > 0"
            _fail("tuned_cnn_stages", f"expected {expected}")

    @property
    def total_steps(self) -> int:
        return self.single_task.steps + self.multi_task.steps

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        return cls(
            model=ModelConfig.from_dict(data.pop("model")),
            data=DataConfig(**data.pop("data")),
            single_task=StageConfig(**data.pop("single_task")),
            multi_task=StageConfig(**data.pop("multi_task")),
            **data,
        )


def demo() -> TrainConfig:
    """CPU demo on synthetic scenes, about 15 minutes on 2 cores (docs/training.md)."""
    return TrainConfig(
        model=ModelConfig(
            backbone=BackboneConfig(image_size=128, patch_size=16, width=192, depth=6, heads=3),
            adapters=AdapterConfig(spec="16/3/1/4", routing="ase"),
            # What the committed demo was trained with (before the Mod-Squad sum was the
            # default): 0.01 x the mean over its 6 layers.
            router_loss=RouterLossConfig(mi_weight=0.01, balance_weight=0.0, layers="mean"),
        ),
        data=DataConfig(dataset="synthetic", val_size=64, augment="flip", workers=1),
        single_task=StageConfig(steps=800, lr=1e-3, warmup=50),
        multi_task=StageConfig(steps=450, lr=1e-3, warmup=50),
        batch_size=16,
        eval_every=400,
        checkpoint_every=100,
    )


def tiny() -> TrainConfig:
    """Seconds on a CPU: for tests and smoke runs."""
    stage = StageConfig(steps=4, lr=3e-3, warmup=1)  # both stages
    return TrainConfig(
        model=ModelConfig(
            backbone=BackboneConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2),
            adapters=AdapterConfig(spec="8/2/1/2", routing="ase"),
        ),
        # No augmentation: a resumed tiny run must reproduce an uninterrupted one exactly.
        data=DataConfig(dataset="synthetic", val_size=4, augment="none", workers=0),
        single_task=stage,
        multi_task=stage,
        batch_size=4,
        eval_every=0,
        checkpoint_every=0,
    )


def _photo(embed: str, multi_steps: int) -> TrainConfig:
    """Synthetic scenes and the photo set in every batch (4 + 4), 192 px, a 4-block ViT of
    width 192 (docs/model_card.md says why this size: the served model's CPU budget)."""
    return TrainConfig(
        model=ModelConfig(
            backbone=BackboneConfig(
                image_size=192, patch_size=16, width=192, depth=4, heads=3, embed=embed
            ),
            adapters=AdapterConfig(spec="16/3/1/4", routing="ase"),
            router_loss=RouterLossConfig(mi_weight=0.005, balance_weight=0.0, layers="sum"),
            dataset="scenes_and_photos",
        ),
        data=DataConfig(
            dataset="scenes_and_photos", val_size=64, augment="flip", workers=1, photos_per_batch=4
        ),
        # Stage 1 trains the base weights on saliency: the one task every photo and every
        # scene has a label for (photo semseg names a few classes on some photos only).
        single_task=StageConfig(steps=600, lr=1e-3, warmup=50),
        single_task_name="saliency",
        multi_task=StageConfig(steps=multi_steps, lr=1e-3, warmup=50),
        batch_size=8,
        eval_every=600,
        checkpoint_every=100,
        # Saliency keeps the per-map balance, though a photo (or crop) with nothing salient
        # then teaches nothing: plain BCE (``--positive-weight saliency=0.5``) scored 0.036
        # lower saliency maxF on the held-out photos (docs/model_card.md).
    )


def photo() -> TrainConfig:
    """The served photo model (demo/photo): the hybrid ViT (EfficientNet-Lite0's stride-16 map,
    frozen), stage 2 twice as long as the backbone comparison's (it gained on every task)."""
    config = _photo("efficientnet_lite0", multi_steps=2400)
    # The training set holds few photos with labelled people: stage 2 pastes one of them on
    # half the crops of photos with nobody, whose parts are labelled background
    # (model/data/mixed.py; docs/model_card.md measured the person IoU it gains). Half the
    # photo crops are the whole photo, and saliency learns ISNet's probability rather than its
    # binarised mask: saliency and edges gained over three seeds, persons did not
    # (docs/model_card.md).
    data = replace(
        config.data, paste_people=0.5, nobody_parts=True, full_views=0.5, soft_saliency=True
    )
    return replace(config, data=data)


def photo_distilled() -> TrainConfig:
    """The plain ViT whose base weights ``python -m model.distill`` trains to reproduce
    EfficientNet-Lite0's map (then loaded with ``--pretrained``: no single-task stage), at the
    backbone comparison's budget (docs/model_card.md)."""
    return _photo("patch", multi_steps=1200)


PASCAL_TRAIN_IMAGES = 4998  # ImageSets/Context/train.txt


def _pascal(width: int, depth: int, heads: int) -> TrainConfig:
    """The paper's recipe on PASCAL-Context: 224 px, 40 epochs, standard loss weights (from
    the task registry), ASE 16/3/1/4, batch 8. The single-task stage is for when no
    pretrained ViT file is given (``--pretrained`` skips it)."""
    batch = 8
    steps = 40 * PASCAL_TRAIN_IMAGES // batch
    return TrainConfig(
        model=ModelConfig(
            backbone=BackboneConfig(
                image_size=224, patch_size=16, width=width, depth=depth, heads=heads
            ),
            adapters=AdapterConfig(spec="16/3/1/4", routing="ase"),
            # Mod-Squad's MI loss as Mod-Squad runs it: 0.005 per layer, summed over layers
            # (the ASE paper names the loss, not its weight; see RouterLossConfig).
            router_loss=RouterLossConfig(mi_weight=0.005, balance_weight=0.0, layers="sum"),
            dataset="pascal_context",
        ),
        data=DataConfig(dataset="pascal_context", val_size=0, augment="benchmark", workers=4),
        single_task=StageConfig(steps=steps, lr=1e-4, warmup=500),
        multi_task=StageConfig(steps=steps, lr=2e-4, warmup=500),
        batch_size=batch,
        eval_every=2 * PASCAL_TRAIN_IMAGES // batch,
        checkpoint_every=PASCAL_TRAIN_IMAGES // batch,
    )


def pascal_vit_s() -> TrainConfig:
    return _pascal(width=384, depth=12, heads=6)


def pascal_vit_b() -> TrainConfig:
    return _pascal(width=768, depth=12, heads=12)


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "demo": demo,
    "tiny": tiny,
    "photo": photo,
    "photo-distilled": photo_distilled,
    "pascal-vit-s": pascal_vit_s,
    "pascal-vit-b": pascal_vit_b,
}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def with_adapters(config: TrainConfig, spec: str, routing: str) -> TrainConfig:
    """The same run with another expert bank (the ablation's variants)."""
    model = replace(config.model, adapters=AdapterConfig(spec=spec, routing=routing))
    return replace(config, model=model)
