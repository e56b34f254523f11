"""All the teachers behind one object: ``Teachers(files)`` loads HED and ISNet into ONNX
Runtime and starts the MediaPipe worker; each call returns a teacher's raw output for one
image and records how long it took (``timings``: teacher -> seconds per image)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.teachers.files import TeacherFiles, session
from model.teachers.isnet import isnet_input, isnet_output
from model.teachers.people import PeopleLabels, PeopleTeacher


class Teachers:
    def __init__(self, files: TeacherFiles, threads: int = 0, people: bool = True) -> None:
        self.hed = session(files.hed, threads)
        self.isnet = session(files.isnet, threads)
        self.isnet_input_name = self.isnet.get_inputs()[0].name
        self.people_teacher = (
            PeopleTeacher(files.mediapipe_python, files.pose_heavy) if people else None
        )
        self.timings: dict[str, list[float]] = defaultdict(list)

    def edges(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) float32 HED edge probability."""
        start = time.perf_counter()
        pixels = image.transpose(2, 0, 1)[None].astype(np.float32)
        probability = self.hed.run(None, {"image": pixels})[0][0, 0]
        self.timings["hed"].append(time.perf_counter() - start)
        return probability

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) float32 ISNet saliency."""
        start = time.perf_counter()
        output = self.isnet.run(["output"], {self.isnet_input_name: isnet_input(image)})[0]
        probability = isnet_output(output, *image.shape[:2])
        self.timings["isnet"].append(time.perf_counter() - start)
        return probability

    def people(self, image_png: Path, height: int, width: int, tiles: bool) -> PeopleLabels:
        """Selfie mask and pose persons of the image stored at ``image_png``."""
        if self.people_teacher is None:
            raise RuntimeError("Teachers(people=False) has no people teacher")
        start = time.perf_counter()
        labels = self.people_teacher.label(image_png, height, width, tiles)
        self.timings["mediapipe"].append(time.perf_counter() - start)
        return labels

    def close(self) -> None:
        if self.people_teacher is not None:
            self.people_teacher.close()

    def __enter__(self) -> Teachers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
