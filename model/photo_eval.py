"""Scores on the held-out real photos against their teachers' labels (the photo set of
``model/data/photos``), beside trivial baselines and the teachers' agreement with each other.

    python -m model.evaluate demo/photo/ckpt.pt --data /data/photos --split val \
        --baselines --compare demo/ckpt.pt --json docs/photo_metrics.json

The protocol (one fixed evaluation size so that a pixel tolerance means the same on every
photo and for every model):

- Every photo is scored at ``EVAL_SIDE`` (192) pixels on its longest side, aspect kept: the
  served photo model's input side, so no model is asked for detail finer than it sees; there a
  2-pixel tolerance is the BSDS benchmark's (0.75% of the diagonal: 1.8 px at 192 x 144). The
  edge score depends much on this size and on a model's output resolution: the rows
  "teachers' maps through a N x N grid" (``--baselines``) score the teachers' own maps
  squashed to N x N and back. The teachers'
  raw outputs (ISNet's saliency and HED's edge probabilities, stored by the set) are resized
  to it, then binarised (saliency: bilinear, > 0.5) or binarised and thinned (HED: each pixel
  the largest probability under its footprint, >= 0.5, then scikit-image's ``thin``:
  ``model.data.mixed.edge_label``, what training uses); the person label (``person.png``:
  1 person, 0 not, 255 unsure) nearest. A model sees the stored photo resized to its own input
  (PIL bilinear, as the server), and its maps come back to the evaluation size by the server's
  rules (``restore_size``).
- **saliency maxF**: beta^2 = 0.3, 19 thresholds, counts summed over the split
  (``SaliencyMetrics``' ``maxF``).
- **edge F**: ODS F over 19 thresholds, the prediction thinned at each, a predicted pixel
  correct within ``EDGE_RADIUS_PX`` of a label edge and a label pixel recalled within as much
  of a predicted one (``EdgeMetrics`` with a fixed radius; many-to-one matching).
- **person IoU**: pooled over the split (intersections and unions summed; unsure pixels
  skipped), the person being semseg's ``person`` class; ``person_parts_IoU`` takes the union
  of the parts task's body parts instead.

Rows: each model, the trivial baselines (a centred Gaussian for saliency, the Sobel magnitude
for edges, a centred upright ellipse for the person) and the second people teacher (MediaPipe's
selfie segmenter >= 0.5) scored as a person predictor against the label the pose teacher made:
the teachers' agreement where two teachers see the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from model.data.mixed import edge_label
from model.data.photos.tree import MANIFEST, item_dir, read_manifest, read_png
from model.data.transforms import image_tensor, resize_image, restore_size
from model.heads import postprocess
from model.metrics import EdgeMetrics, SaliencyMetrics
from model.model import ASEModel
from model.tasks import IGNORE_INDEX, TASKS, require_dataset

EVAL_SIDE = 192
EDGE_RADIUS_PX = 2
HALF = 0.5
CEILING_GRIDS = (24, 96)  # the plain head's output grid at 192 px, and the detail decoder's
TARGETS = {"saliency_maxF": 80.0, "edge_F": 85.0, "person_IoU": 55.0}
"""The issue's targets on held-out photos (percent)."""


@dataclass(frozen=True)
class PhotoTruth:
    """One held-out photo: the stored image, and its teachers' labels at the evaluation size."""

    name: str
    kind: str
    photo: np.ndarray  # (H, W, 3) uint8 as stored
    image: np.ndarray  # (h, w, 3) uint8 at the evaluation size
    saliency: np.ndarray  # (h, w) uint8 {0, 1}
    edges: np.ndarray  # (h, w) uint8 {0, 1}, thinned
    person: np.ndarray  # (h, w) uint8 {0, 1, 255}
    selfie: np.ndarray | None  # (h, w) float32 the selfie segmenter's probability, if stored

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[:2]


@dataclass(frozen=True)
class PhotoPrediction:
    saliency: np.ndarray | None  # (h, w) probabilities
    edges: np.ndarray | None  # (h, w) probabilities
    person: np.ndarray | None  # (h, w) bool
    person_parts: np.ndarray | None = None  # (h, w) bool: the parts task's union


PhotoPredictor = Callable[[PhotoTruth], PhotoPrediction]


def eval_size(height: int, width: int, side: int = EVAL_SIDE) -> tuple[int, int]:
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _probability(folder: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    stored = read_png(folder / f"{name}.png").astype(np.float32) / 255.0
    return restore_size("probability", stored, size)


def load_truth(root: Path, record) -> PhotoTruth:
    """One item of the set as ``PhotoTruth`` (module docstring: the protocol)."""
    folder = item_dir(root, record.id)
    photo = read_png(folder / "image.png")
    size = eval_size(*photo.shape[:2])
    person_file = folder / "person.png"
    if person_file.is_file():
        person = restore_size("classes", read_png(person_file), size).astype(np.uint8)
    else:  # a composite: its stamps are not people; no person label either way
        person = np.full(size, IGNORE_INDEX, np.uint8)
    selfie_file = folder / "teacher_selfie.png"
    return PhotoTruth(
        name=record.id,
        kind=record.kind,
        photo=photo,
        image=resize_image(photo, size),
        saliency=(_probability(folder, "saliency", size) > HALF).astype(np.uint8),
        edges=edge_label(read_png(folder / "teacher_hed.png").astype(np.float32) / 255.0, size),
        person=person,
        selfie=_probability(folder, "teacher_selfie", size) if selfie_file.is_file() else None,
    )


def held_out(root: Path, split: str, count: int = 0) -> list:
    """The manifest's records of ``split`` (the first ``count``; 0: all)."""
    records = [r for r in read_manifest(Path(root)) if r.split == split]
    if not records:
        raise ValueError(f"{root}: no {split!r} items in the photo set")
    return records[:count] if count else records


class PooledIoU:
    """IoU of a binary map summed over the split; label pixels of 255 skipped."""

    def __init__(self) -> None:
        self.intersection = self.union = 0

    def update(self, predicted: np.ndarray, label: np.ndarray) -> None:
        known = label != IGNORE_INDEX
        truth, predicted = (label == 1) & known, predicted & known
        self.intersection += int((truth & predicted).sum())
        self.union += int((truth | predicted).sum())

    def compute(self) -> float | None:
        return 100.0 * self.intersection / self.union if self.union else None


class PhotoScores:
    """The three scores of one predictor over the split (``None`` where it predicts nothing)."""

    def __init__(self) -> None:
        self.saliency, self.edges = SaliencyMetrics(), EdgeMetrics(radius_px=EDGE_RADIUS_PX)
        self.person, self.person_parts = PooledIoU(), PooledIoU()
        self.seen: set[str] = set()

    def update(self, prediction: PhotoPrediction, truth: PhotoTruth) -> None:
        if prediction.saliency is not None:
            self.saliency.update(prediction.saliency, truth.saliency)
            self.seen.add("saliency")
        if prediction.edges is not None:
            self.edges.update(prediction.edges, truth.edges)
            self.seen.add("edges")
        for name in ("person", "person_parts"):
            mask = getattr(prediction, name)
            if mask is not None:
                getattr(self, name).update(mask, truth.person)
                self.seen.add(name)

    def compute(self) -> dict[str, float | None]:
        edges = self.edges.compute() if "edges" in self.seen else {}
        return {
            "saliency_maxF": self.saliency.compute()["maxF"] if "saliency" in self.seen else None,
            "edge_F": edges.get("odsF"),
            "edge_threshold": edges.get("ods_threshold"),
            "person_IoU": self.person.compute() if "person" in self.seen else None,
            "person_parts_IoU": (
                self.person_parts.compute() if "person_parts" in self.seen else None
            ),
        }


def score(predictor: PhotoPredictor, truths: Iterable[PhotoTruth]) -> dict[str, float | None]:
    scores = PhotoScores()
    for truth in truths:
        scores.update(predictor(truth), truth)
    return scores.compute()


# ---------------------------------------------------------------- predictors


def model_photo_predictor(model: ASEModel) -> PhotoPredictor:
    """The model on the stored photo resized to its input; maps back at the evaluation size."""
    size = model.config.backbone.image_size
    tasks = model.config.tasks
    classes = require_dataset(model.config.dataset).classes("semseg") or ()
    person_id = classes.index("person") if "person" in classes else None

    @torch.no_grad()
    def predict(truth: PhotoTruth) -> PhotoPrediction:
        images = image_tensor(resize_image(truth.photo, (size, size)))[None]
        out = model.forward_tasks(images, tasks)
        maps = {
            t: postprocess(TASKS[t].kind, raw)[0].float().numpy() for t, raw in out.maps.items()
        }
        restored = {
            t: restore_size(
                TASKS[t].kind, m.argmax(0) if TASKS[t].kind == "classes" else m[0], truth.size
            )
            for t, m in maps.items()
            if TASKS[t].kind != "vector"
        }
        semseg = restored.get("semseg")
        return PhotoPrediction(
            saliency=restored.get("saliency"),
            edges=restored.get("edges"),
            person=semseg == person_id if semseg is not None and person_id is not None else None,
            person_parts=restored["parts"] > 0 if "parts" in restored else None,
        )

    return predict


def centred_gaussian(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
    """exp(-d^2/2) with d the distance from the centre in units of ``sigma`` x each side."""
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    return np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))


def centred_person(height: int, width: int) -> np.ndarray:
    """An upright ellipse in the middle: a quarter of the width, three quarters of the height."""
    rows = ((np.arange(height) + 0.5) / height - 0.5) / 0.375
    cols = ((np.arange(width) + 0.5) / width - 0.5) / 0.125
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """The grey image's Sobel gradient magnitude, divided by its maximum: [0, 1]."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    magnitude = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    return magnitude / max(float(magnitude.max()), 1e-6)


def baseline_predictor(truth: PhotoTruth) -> PhotoPrediction:
    height, width = truth.size
    return PhotoPrediction(
        saliency=centred_gaussian(height, width),
        edges=sobel_edges(truth.image),
        person=centred_person(height, width),
    )


def selfie_predictor(truth: PhotoTruth) -> PhotoPrediction:
    """The second people teacher as a person predictor (nothing on composites: no selfie map)."""
    person = truth.selfie >= HALF if truth.selfie is not None else None
    return PhotoPrediction(saliency=None, edges=None, person=person)


def grid_ceiling(root: Path, cells: int) -> PhotoPredictor:
    """The teachers' own saliency and HED maps squashed to ``cells`` x ``cells`` and back (as a
    model of that output resolution would give them at best): what resolution alone allows."""

    def predict(truth: PhotoTruth) -> PhotoPrediction:
        folder = item_dir(root, truth.name)
        maps = {}
        for name in ("saliency", "teacher_hed"):
            small = Image.fromarray(read_png(folder / f"{name}.png")).resize(
                (cells, cells), Image.Resampling.BILINEAR
            )
            maps[name] = restore_size("probability", np.asarray(small) / 255.0, truth.size)
        return PhotoPrediction(maps["saliency"], maps["teacher_hed"], None)

    return predict


def photo_rows(
    models: dict[str, ASEModel], truths: list[PhotoTruth], baselines: bool, root: Path
) -> dict[str, dict[str, Any]]:
    rows = {name: score(model_photo_predictor(model), truths) for name, model in models.items()}
    if baselines:
        rows["centred Gaussian / Sobel magnitude / centred ellipse"] = score(
            baseline_predictor, truths
        )
        for cells in CEILING_GRIDS:
            rows[f"teachers' maps through a {cells}x{cells} grid"] = score(
                grid_ceiling(root, cells), truths
            )
        with_selfie = [truth for truth in truths if truth.selfie is not None]
        rows["teachers' agreement: selfie segmenter vs pose's person label"] = score(
            selfie_predictor, with_selfie
        )
    return rows


def format_photo_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| held-out photos | saliency maxF | edge F (2 px) | person IoU | person IoU (parts) |",
        "| --- | --- | --- | --- | --- |",
    ]
    keys = ("saliency_maxF", "edge_F", "person_IoU", "person_parts_IoU")
    for name, values in rows.items():
        cells = [f"{values[k] / 100:.3f}" if values.get(k) is not None else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    targets = [f">= {TARGETS[k] / 100:.2f}" for k in keys[:3]]
    lines.append("| target | " + " | ".join(targets) + " | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the command line


def is_photo_set(data: str) -> bool:
    """Whether ``--data`` is the root of a photo set (its manifest is there)."""
    return (Path(data) / MANIFEST).is_file()


def photo_main(args) -> dict[str, Any]:
    """``python -m model.evaluate CKPT --data PHOTO_SET [--compare CKPT ...] [--baselines]``."""
    from model.checkpoint import load_checkpoint

    models = {}
    for path in (args.checkpoint, *args.compare):
        model, payload = load_checkpoint(path)
        models[f"{path} (step {payload.get('step')})"] = model.eval()
    records = held_out(Path(args.data), args.split, args.count)
    truths = [load_truth(Path(args.data), record) for record in records]
    rows = photo_rows(models, truths, args.baselines, Path(args.data))
    report = {
        "data": str(args.data),
        "split": args.split,
        "images": len(truths),
        "kinds": {kind: sum(t.kind == kind for t in truths) for kind in {t.kind for t in truths}},
        "protocol": {"eval_side": EVAL_SIDE, "edge_radius_px": EDGE_RADIUS_PX},
        "rows": rows,
    }
    print(format_photo_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report
