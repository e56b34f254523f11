"""The ONNX Runtime session and the NumPy/PIL work around it: images in, maps out.

Pre-processing: bilinear resize to the model's input, scale to [0, 1], ImageNet normalise.
Post-processing back to the original size: class maps take the argmax at model resolution
and are resized with nearest (a label never blends into another); probabilities and normals
are resized bilinearly, and normals are renormalised to unit length afterwards.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

from server.modeldir import GRAPH_INPUTS, ROUTER_OUTPUTS, ModelDir, ModelDirError

log = logging.getLogger("server.runtime")


# How ORT's pool threads wait for work. ORT's default ("always") busy-waits between parallel
# sections, which keeps the model fast, and also long after a run, which takes a core from
# the decoding and PNG encoding around it. "brief" spins at most 100 us before sleeping: as
# fast a model, and the cores free right after it. "never" sleeps at once and wakes threads
# for every parallel section: a slower model. Measured in docs/benchmarks.md, server section.
SPIN_CONFIG: dict[str, dict[str, str]] = {
    "brief": {"session.intra_op.spin_duration_us": "100"},
    "always": {},
    "never": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
}


class ModelRuntime:
    """One ORT session on the graph that the model directory picks for the provider taken."""

    def __init__(
        self, model: ModelDir, providers: list[str], threads: int = 0, spin: str = "brief"
    ) -> None:
        self.model = model
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads
        self._options.log_severity_level = 3  # ORT's own warnings go to our log, not stderr
        for key, value in SPIN_CONFIG[spin].items():
            self._options.add_session_config_entry(key, value)
        available = ort.get_available_providers()
        wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        skipped = [p for p in providers if p not in available]
        if skipped:
            log.warning("providers not available in this onnxruntime build: %s", skipped)
        self.session = self._open(model.graph_for(wanted[0]), wanted)
        taken = self.session.get_providers()[0]
        if model.graph_for(taken) != model.graph_for(wanted[0]):
            # The preferred provider failed to start (no GPU): reopen with the graph for the
            # provider actually taken, as metadata.provider_graph says.
            self.session = self._open(model.graph_for(taken), [taken])
        self.providers = self.session.get_providers()
        self.graph = model.graph_for(self.provider)
        log.info(
            "model %s %s on %s (graph %s)",
            model.name,
            model.version,
            self.providers,
            self.graph.name,
        )

    def _open(self, graph, providers: list[str]) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(str(graph), self._options, providers=providers)
        except Exception as error:  # ORT raises several types for a bad file: name them all here
            raise ModelDirError(f"ONNX Runtime cannot load {graph}: {error}") from None
        names = tuple(i.name for i in session.get_inputs())
        outputs = tuple(o.name for o in session.get_outputs())
        if names != GRAPH_INPUTS or outputs != self.model.outputs:
            raise ModelDirError(
                f"{graph} has inputs {names} and outputs {outputs}; metadata.json promises "
                f"{GRAPH_INPUTS} and {self.model.outputs}"
            )
        return session

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(
        self, images: np.ndarray, stream_image: np.ndarray, stream_task: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One forward pass: ``images`` (B, 3, H, W), streams (S,) -> every output by name."""
        feeds = {"images": images, "stream_image": stream_image, "stream_task": stream_task}
        values = self.session.run(None, feeds)
        return dict(zip(self.model.outputs, values, strict=True))

    def warm_up(self, max_batch: int) -> float:
        """Run a full batch with every task once, so the first request pays no allocation cost."""
        started = time.perf_counter()
        images = np.zeros((max_batch, 3, self.model.height, self.model.width), np.float32)
        stream_image = np.repeat(np.arange(max_batch, dtype=np.int64), len(self.model.tasks))
        stream_task = np.tile(np.array([t.id for t in self.model.tasks], np.int64), max_batch)
        outputs = self.run(images, stream_image, stream_task)
        for name in ROUTER_OUTPUTS:
            if outputs[name].shape[0] != stream_task.shape[0]:
                raise ModelDirError(f"{self.graph}: {name} has {outputs[name].shape[0]} rows")
        return time.perf_counter() - started


def preprocess(rgb: np.ndarray, model: ModelDir) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> normalised float32 (3, H, W) at the model's input size.

    Each channel's 256 possible values are normalised once (``normalise_table``) and looked up:
    the same float32 values as ``(rgb / 255 - mean) / std`` computed per pixel, in one pass.
    """
    if rgb.shape[:2] != (model.height, model.width):
        size = (model.width, model.height)
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    table = normalise_table(model.mean, model.std)  # (3, 256)
    normalised = np.empty((3, *rgb.shape[:2]), np.float32)
    for channel in range(3):
        np.take(table[channel], rgb[..., channel], out=normalised[channel])
    return normalised


@functools.cache
def normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ``(v / 255 - mean[c]) / std[c]`` for every uint8 value v, in float32
    steps."""
    values = np.arange(256, dtype=np.float32) / 255.0
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return np.stack([(values - mean32[c]) / std32[c] for c in range(3)])


def restore_size(kind: str, prediction: np.ndarray, width: int, height: int) -> np.ndarray:
    """A stream's prediction (C, H, W) at model size -> the map at the image's size.

    ``classes``: uint8 ids (h, w); ``probability``: float32 in [0, 1] (h, w);
    ``vector``: float32 unit vectors (h, w, 3).
    """
    same_size = prediction.shape[1:] == (height, width)  # nothing to resize: skip the copies
    if kind == "classes":
        ids = class_ids(prediction)  # (H, W)
        if same_size:
            return ids
        return np.asarray(Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST))
    if same_size:
        channels = list(prediction.astype(np.float32, copy=False))
    else:
        channels = [_resize_float(channel, width, height) for channel in prediction]
    if kind == "probability":
        return np.clip(channels[0], 0.0, 1.0)
    return _unit_vectors(channels)


def class_ids(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) logits -> uint8 (H, W) argmax, the first class winning ties, like ``argmax``.

    ``argmax(axis=0)`` walks the class axis with a stride of a whole plane and costs more than
    PNG-encoding the result; comparing whole planes class after class is contiguous. (Only NaN
    logits, which no exported model emits, would be ranked differently.)
    """
    best = logits[0].copy()  # (H, W)
    ids = np.zeros(best.shape, np.uint8)
    for index in range(1, logits.shape[0]):
        higher = logits[index] > best
        ids[higher] = index
        np.maximum(best, logits[index], out=best)
    return ids


def _unit_vectors(channels: list[np.ndarray]) -> np.ndarray:
    """Three (h, w) planes -> (h, w, 3) unit vectors. Full-size maps are megabytes: every pass
    writes into an array made once rather than a new temporary (fresh pages cost more than the
    arithmetic)."""
    x, y, z = channels
    norms = x * x  # (h, w); summed in x, y, z order, as a dot product over the last axis does
    norms += y * y
    norms += z * z
    np.sqrt(norms, out=norms)
    np.maximum(norms, np.float32(1e-6), out=norms)
    vectors = np.empty((*norms.shape, 3), np.float32)  # (h, w, 3)
    for axis, plane in enumerate(channels):
        np.divide(plane, norms, out=vectors[..., axis])
    return vectors


def _resize_float(channel: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
