"""MediaPipe's people models, run inside their own venv (``make mediapipe-venv``): mediapipe
0.10.14 pins numpy < 2 and protobuf < 5, which the project's venv cannot hold. The project
starts this file as a subprocess (``model.teachers.people``) and talks to it in JSON lines.

It imports only the standard library, NumPy, Pillow and mediapipe (never the project).
Request (one line on stdin): ``{"image": "in.png", "out": "out.npz", "boxes": [[x0, y0, x1,
y1], ...]}``. Reply (one line on stdout): ``{"found": n}`` or ``{"error": "..."}``.
``out.npz`` holds

- ``selfie``: (H, W) float16, the selfie segmenter's person probability on the whole image
  (the general model, 256x256 input: it covers groups, coarsely);
- for each of the ``n`` boxes where pose found a person (pose finds one per image it sees, so
  the caller asks for several crops), ``box{i}`` (4,) int, ``landmarks{i}`` (33, 4) float32
  as (x px, y px, z, visibility) in the whole image's pixels, ``mask{i}`` (box height, box
  width) float16, pose's segmentation of that person inside the box.

Pose runs the heavy landmark model (``pose_landmark_heavy.tflite``, 27.7 MB), which the
wheel does not carry (mediapipe downloads it at run time): ``--pose-heavy`` names the copy
from npm ``@mediapipe/pose``, put where mediapipe looks for it before pose starts, so
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HEAVY = "modules/pose_landmark/pose_landmark_heavy.tflite"


def install_heavy_model(source: Path) -> None:
    import mediapipe

    target = Path(mediapipe.__file__).parent / HEAVY
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)


def pose_in_box(pose, image: np.ndarray, box: list[int]) -> dict[str, np.ndarray] | None:
    """Pose on the crop ``box`` of ``image``: its landmarks in image pixels and its mask."""
    x0, y0, x1, y1 = box
    result = pose.process(np.ascontiguousarray(image[y0:y1, x0:x1]))
    if result.pose_landmarks is None or result.segmentation_mask is None:
        return None
    width, height = x1 - x0, y1 - y0
    landmarks = [
        (x0 + p.x * width, y0 + p.y * height, p.z, p.visibility)
        for p in result.pose_landmarks.landmark
    ]
    return {
        "box": np.array(box, np.int64),
        "landmarks": np.array(landmarks, np.float32),
        "mask": np.asarray(result.segmentation_mask, np.float16),
    }


def label(request: dict, selfie, pose) -> dict:
    image = np.asarray(Image.open(request["image"]).convert("RGB"))
    arrays = {"selfie": np.asarray(selfie.process(image).segmentation_mask, np.float16)}
    found = 0
    for box in request["boxes"]:
        person = pose_in_box(pose, image, box)
        if person is not None:
            arrays.update({f"{name}{found}": value for name, value in person.items()})
            found += 1
    np.savez(request["out"], **arrays)
    return {"found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pose-heavy", type=Path, required=True)
    args = parser.parse_args()
    install_heavy_model(args.pose_heavy)
    import mediapipe as mp

    selfie = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
    pose = mp.solutions.pose.Pose(
        static_image_mode=True, model_complexity=2, enable_segmentation=True
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = label(json.loads(line), selfie, pose)
        except Exception as error:  # reported to the caller, which raises it there
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
