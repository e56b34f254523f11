"""Human parts from a person's pose landmarks and mask: the six groups of ``PARTS_CLASSES``.

MediaPipe's pose gives 33 BlazePose landmarks (ids below) and a person mask; no human parser
exists in the registries. Each mask pixel is given the part of the skeleton element nearest
to it: limbs are line segments between joints (a pixel within a limb's half-width belongs to
it even in front of the torso: arms often cross the body), the torso is the polygon of the
shoulders and hips, the head a disc around the face landmarks. A pixel far from every
visible element, or a person whose shoulders are not visible, is left unlabelled (255).
Landmarks with visibility < 0.5 are not used. PASCAL-Part's groups: head (with hair), torso
(with neck), upper arm, lower arm with hand, upper leg, lower leg with foot.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon

from model.tasks import IGNORE_INDEX, PARTS_CLASSES

MIN_VISIBILITY = 0.5
FACE = tuple(range(11))  # nose, eyes, ears, mouth
EARS = (7, 8)
TORSO = (11, 12, 24, 23)  # shoulders, hips: the polygon's corners in order
LIMBS: dict[str, tuple[tuple[int, int], ...]] = {
    "upper_arm": ((11, 13), (12, 14)),
    "lower_arm": ((13, 15), (14, 16), (15, 17), (15, 19), (15, 21), (16, 18), (16, 20), (16, 22)),
    "upper_leg": ((23, 25), (24, 26)),
    "lower_leg": ((25, 27), (26, 28), (27, 29), (29, 31), (27, 31), (28, 30), (30, 32), (28, 32)),
}
HALF_WIDTH = {"upper_arm": 0.14, "lower_arm": 0.12, "upper_leg": 0.2, "lower_leg": 0.15}
"""A limb's half-width as a share of the body's scale (shoulders' midpoint to hips')."""
MAX_DISTANCE = 0.5  # a pixel farther than this share of the scale from every element: 255


def body_scale(points: np.ndarray, visible: np.ndarray) -> float | None:
    """Shoulders' midpoint to hips' midpoint, else 1.6 shoulder widths; None without shoulders."""
    if not visible[[11, 12]].all():
        return None
    shoulders = points[[11, 12]].mean(axis=0)
    if visible[[23, 24]].all():
        return float(np.linalg.norm(points[[23, 24]].mean(axis=0) - shoulders))
    return 1.6 * float(np.linalg.norm(points[11] - points[12]))


def segment_distance(pixels: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(P,) distance of (P, 2) pixel centres to the segment start-end."""
    direction = end - start
    length2 = max(float(direction @ direction), 1e-9)
    t = np.clip((pixels - start) @ direction / length2, 0.0, 1.0)
    return np.linalg.norm(pixels - (start + t[:, None] * direction), axis=1)


def element_distances(
    pixels: np.ndarray,
    points: np.ndarray,
    visible: np.ndarray,
    scale: float,
    shape: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Per part group, each pixel's distance to its nearest visible element (inf if none);
    limbs' distances are less their half-width, so <= 0 means inside the limb."""
    far = np.full(len(pixels), np.inf)
    distances = {}
    for group, segments in LIMBS.items():
        nearest = far.copy()
        for a, b in segments:
            if visible[a] and visible[b]:
                nearest = np.minimum(nearest, segment_distance(pixels, points[a], points[b]))
        distances[group] = nearest - HALF_WIDTH[group] * scale
    face = [i for i in FACE if visible[i]]
    if face:
        centre = points[face].mean(axis=0)
        ears = [i for i in EARS if visible[i]]
        radius = 0.75 * np.linalg.norm(points[EARS[0]] - points[EARS[1]]) if len(ears) == 2 else 0
        radius = max(radius, 0.3 * scale)
        distances["head"] = np.maximum(np.linalg.norm(pixels - centre, axis=1) - radius, 0.0)
    else:
        distances["head"] = far
    distances["torso"] = torso_distance(pixels, points, visible, shape)
    return distances


def torso_distance(
    pixels: np.ndarray, points: np.ndarray, visible: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """0 inside the shoulders-hips polygon, else the distance to its nearest side."""
    if not visible[list(TORSO)].all():
        return segment_distance(pixels, points[11], points[12])  # shoulders only: their line
    corners = points[list(TORSO)]
    inside = np.zeros(shape, bool)
    rows, cols = polygon(corners[:, 1], corners[:, 0], shape)
    inside[rows, cols] = True
    sides = [segment_distance(pixels, corners[i], corners[(i + 1) % 4]) for i in range(4)]
    distance = np.min(sides, axis=0)
    pixel_rows, pixel_cols = pixels[:, 1].astype(int), pixels[:, 0].astype(int)
    distance[inside[pixel_rows, pixel_cols]] = 0.0
    return distance


def person_parts(mask: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W) uint8: part ids on the person's ``mask`` pixels, 255 where unsure, 0 elsewhere."""
    parts = np.zeros(mask.shape, np.uint8)
    points, visible = landmarks[:, :2].astype(np.float64), landmarks[:, 3] >= MIN_VISIBILITY
    scale = body_scale(points, visible)
    rows, cols = np.nonzero(mask)
    if scale is None or scale < 2:
        parts[rows, cols] = IGNORE_INDEX
        return parts
    pixels = np.stack([cols, rows], axis=1).astype(np.float64)  # (P, 2) as (x, y)
    distances = element_distances(pixels, points, visible, scale, mask.shape)
    groups = list(distances)
    table = np.stack([distances[g] for g in groups])  # (groups, P)
    limb_rows = [i for i, g in enumerate(groups) if g in LIMBS]
    in_limb = table[limb_rows].min(axis=0) <= 0  # limbs first: an arm in front of the torso
    table[[i for i in range(len(groups)) if i not in limb_rows], :] += np.where(in_limb, np.inf, 0)
    nearest = table.argmin(axis=0)
    ids = np.array([PARTS_CLASSES.index(g) for g in groups], np.uint8)[nearest]
    ids[table.min(axis=0) > MAX_DISTANCE * scale] = IGNORE_INDEX
    parts[rows, cols] = ids
    return parts
