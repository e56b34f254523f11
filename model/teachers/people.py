"""People: MediaPipe's selfie segmenter and pose (landmarks + mask), driven in their own venv.

``PeopleTeacher`` starts ``mediapipe_worker.py`` with the mediapipe venv's Python and asks it
for the selfie mask of the whole image and for pose on several crops: pose finds one person
per image it sees, so a photo with several people (or small ones) is also looked at in
overlapping square tiles at two finer scales. Each crop's person is kept when its upper body
is visible, it is not cut by a tile edge inside the image (a person cut by a tile is found
whole at a coarser scale), and it neither overlaps nor touches one already kept (coarse
scales first: a tile's find beside a person was a piece of them, or the camera they held);
a tile's find must also stand upright (pose on small crops "found" lying people in flat
things). People touching each other may so go unfound: the catalogue marks crowds. The result:
every person's mask and 33 landmarks in image pixels.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation

WORKER = Path(__file__).with_name("mediapipe_worker.py")
TILE_FRACTIONS = (0.5, 0.33)  # tile side as a fraction of the image's longer side
UPPER_BODY = (0, 11, 12, 13, 14, 23, 24)  # BlazePose ids: nose, shoulders, elbows, hips
MIN_VISIBILITY = 0.6  # mean visibility of UPPER_BODY for the whole image's find
MIN_TILE_VISIBILITY = 0.8  # and for a tile's (false finds in tiles scored 0.34-0.72)
MIN_AREA = 0.005  # a person covers at least this share of its crop
MAX_CUT = 0.2  # mask pixels on a tile edge inside the image, per sqrt(mask pixels)
TOUCH = 3  # px: a tile's find touching a kept person is a piece of it (or of what it holds)
MAX_TILE_TILT = 45.0  # degrees from vertical of a tile find's torso (a rag on grass lay flat)


@dataclass
class Person:
    mask: np.ndarray  # (H, W) float32 probability
    landmarks: np.ndarray  # (33, 4) float32: x px, y px, z, visibility


@dataclass
class PeopleLabels:
    selfie: np.ndarray  # (H, W) float32 person probability (selfie segmenter)
    persons: list[Person] = field(default_factory=list)

    @property
    def pose_mask(self) -> np.ndarray:
        """(H, W) float32: the union (max) of every pose person's mask."""
        if not self.persons:
            return np.zeros_like(self.selfie)
        return np.max([person.mask for person in self.persons], axis=0)


def tile_boxes(height: int, width: int, tiles: bool = True) -> list[list[int]]:
    """The whole image, then (``tiles``) overlapping squares at ``TILE_FRACTIONS`` of the
    longer side (capped by the shorter), half a side apart, covering the image."""
    boxes = [[0, 0, width, height]]
    for fraction in TILE_FRACTIONS if tiles else ():
        side = min(round(fraction * max(height, width)), height, width)
        for y in _starts(height, side):
            for x in _starts(width, side):
                boxes.append([x, y, x + side, y + side])
    return boxes


def _starts(length: int, side: int) -> list[int]:
    count = int(np.ceil((length - side) / (side / 2))) + 1
    return sorted({round(s) for s in np.linspace(0, length - side, count)})


def cut_length(mask: np.ndarray, box: list[int], height: int, width: int) -> float:
    """Mask pixels on the edges of ``box`` that lie inside the image, per sqrt(mask pixels):
    about 1 for a blob cut straight through, near 0 for a person whose foot touches it."""
    x0, y0, x1, y1 = box
    inside = mask > 0.5
    edges = []
    if y0 > 0:
        edges.append(inside[0, :])
    if y1 < height:
        edges.append(inside[-1, :])
    if x0 > 0:
        edges.append(inside[:, 0])
    if x1 < width:
        edges.append(inside[:, -1])
    on_edges = sum(int(edge.sum()) for edge in edges)
    return on_edges / max(float(np.sqrt(inside.sum())), 1.0)


def torso_tilt(landmarks: np.ndarray) -> float:
    """Degrees between vertical and the line from the hips' midpoint to the shoulders'."""
    shoulders = landmarks[[11, 12], :2].mean(axis=0)
    hips = landmarks[[23, 24], :2].mean(axis=0)
    dx, dy = shoulders - hips
    return float(np.degrees(np.arctan2(abs(dx), -dy)))  # image y grows downwards


def keep_people(found: list[dict], height: int, width: int) -> list[Person]:
    """The crops' persons worth keeping, in order (see the module docstring)."""
    kept: list[Person] = []
    claimed = np.zeros((height, width), bool)
    for crop in found:
        box, mask, landmarks = crop["box"].tolist(), crop["mask"], crop["landmarks"]
        x0, y0, x1, y1 = box
        inside = mask > 0.5
        whole = box == [0, 0, width, height]
        least = MIN_VISIBILITY if whole else MIN_TILE_VISIBILITY
        if landmarks[list(UPPER_BODY), 3].mean() < least or inside.mean() < MIN_AREA:
            continue
        if cut_length(mask, box, height, width) > MAX_CUT:
            continue
        if not whole and torso_tilt(landmarks) > MAX_TILE_TILT:
            continue
        full = np.zeros((height, width), np.float32)
        full[y0:y1, x0:x1] = mask
        if (binary_dilation(full > 0.5, iterations=TOUCH) & claimed).any():
            continue
        claimed |= full > 0.5
        kept.append(Person(full, landmarks.astype(np.float32)))
    return kept


class PeopleTeacher:
    """The MediaPipe worker process; ``label(image_png, height, width)`` -> ``PeopleLabels``."""

    def __init__(self, python: str | Path, pose_heavy: str | Path) -> None:
        if not Path(python).is_file():
            raise FileNotFoundError(f"no mediapipe venv Python at {python} (make mediapipe-venv)")
        command = [str(python), str(WORKER), "--pose-heavy", str(pose_heavy)]
        self.scratch = tempfile.TemporaryDirectory(prefix="ase-people-")
        self.log = Path(self.scratch.name) / "worker.log"  # TFLite's and absl's chatter
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self._reply()  # {"ready": true} once the models are loaded

    def _reply(self) -> dict:
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            tail = self.log.read_text()[-1000:]
            raise RuntimeError(f"the MediaPipe worker exited ({self.process.wait()}): {tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"MediaPipe worker: {reply['error']}")
        return reply

    def label(self, image_png: str | Path, height: int, width: int, tiles: bool) -> PeopleLabels:
        out = Path(self.scratch.name) / "people.npz"
        boxes = tile_boxes(height, width, tiles)
        request = {"image": str(image_png), "out": str(out), "boxes": boxes}
        self.process.stdin.write(json.dumps(request) + "\n")
        count = self._reply()["found"]
        with np.load(out) as arrays:
            found = [
                {name: arrays[f"{name}{i}"] for name in ("box", "landmarks", "mask")}
                for i in range(count)
            ]
            selfie = arrays["selfie"].astype(np.float32)
        return PeopleLabels(selfie, keep_people(found, height, width))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        self.scratch.cleanup()

    def __enter__(self) -> PeopleTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
