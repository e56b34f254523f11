"""How far the teachers agree with each other, measured on the built tree: an upper bound on
what a student trained on their labels can be scored at against them.

- people photos (catalogue ``people`` all, some or agreed) where pose found someone: IoU between
  ISNet's saliency >= 0.5 and the MediaPipe masks (pose's persons; the selfie segmenter's
  >= 0.5; their union), and between the two MediaPipe masks; per image (mean) and pooled over
  the images (sums of intersections and unions), photos and video frames apart; and how many
  people photos pose found nobody in (people hidden behind a board, a bust portrait: not in
  the IoUs);
- photos with nobody in them: how often pose (whole image) or the selfie mask still finds a
  person there, and how much of the image the selfie mask covers;
- composites: ISNet's saliency >= 0.5 against the pasted stamps' exact masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data.photos.tree import PhotoRecord, item_dir, read_png

HALF = 128  # round(255 p) >= 128 <=> p > 0.5 (to the stored precision)


def _masks(root: Path, record: PhotoRecord, names: tuple[str, ...]) -> list[np.ndarray]:
    folder = item_dir(root, record.id)
    return [read_png(folder / f"{name}.png") >= HALF for name in names]


class IoU:
    """Per-image IoUs and pooled sums of one pair of masks."""

    def __init__(self) -> None:
        self.per_image: list[float] = []
        self.intersection = self.union = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        intersection, union = int((a & b).sum()), int((a | b).sum())
        self.intersection += intersection
        self.union += union
        if union:
            self.per_image.append(intersection / union)

    def summary(self) -> dict:
        return {
            "images": len(self.per_image),
            "mean_iou": round(float(np.mean(self.per_image)), 3) if self.per_image else None,
            "pooled_iou": round(self.intersection / self.union, 3) if self.union else None,
        }


PAIRS = {
    "isnet_vs_pose": (0, 1),
    "isnet_vs_selfie": (0, 2),
    "isnet_vs_pose_or_selfie": (0, 3),
    "pose_vs_selfie": (1, 2),
}


def people_agreement(root: Path, records: list[PhotoRecord]) -> dict:
    result = {}
    for kind in ("photo", "frame"):
        chosen = [r for r in records if r.kind == kind and r.people != "none"]
        scores = {name: IoU() for name in PAIRS}
        nobody_found = 0
        for record in chosen:
            salient, pose, selfie = _masks(
                root, record, ("saliency", "teacher_pose", "teacher_selfie")
            )
            if not pose.any():
                nobody_found += 1
                continue
            masks = (salient, pose, selfie, pose | selfie)
            for name, (i, j) in PAIRS.items():
                scores[name].add(masks[i], masks[j])
        result[kind] = {name: score.summary() for name, score in scores.items()}
        result[kind]["people_photos_pose_found_nobody_in"] = nobody_found
    return result


def false_people(root: Path, records: list[PhotoRecord]) -> dict:
    chosen = [r for r in records if r.kind == "photo" and r.people == "none"]
    pose_found = selfie_found = 0
    selfie_area = []
    for record in chosen:
        pose, selfie = _masks(root, record, ("teacher_pose", "teacher_selfie"))
        pose_found += bool(pose.any())
        selfie_found += bool(selfie.any())
        selfie_area.append(float(selfie.mean()))
    return {
        "photos": len(chosen),
        "pose_found_someone": pose_found,
        "selfie_found_someone": selfie_found,
        "selfie_mean_area": round(float(np.mean(selfie_area)), 4) if selfie_area else None,
    }


def composite_agreement(root: Path, records: list[PhotoRecord]) -> dict:
    score, covered, stamp_pixels = IoU(), 0, 0
    for record in (r for r in records if r.kind == "composite"):
        folder = item_dir(root, record.id)
        salient = read_png(folder / "saliency.png") >= HALF
        stamps = read_png(folder / "semseg.png") > 0
        score.add(salient, stamps)
        covered += int((salient & stamps).sum())
        stamp_pixels += int(stamps.sum())
    recall = round(covered / stamp_pixels, 3) if stamp_pixels else None
    return {"isnet_vs_stamps": score.summary(), "stamp_pixels_salient": recall}


def agreement(root: Path, records: list[PhotoRecord]) -> dict:
    return {
        "people": people_agreement(root, records),
        "no_people": false_people(root, records),
        "composites": composite_agreement(root, records),
    }
