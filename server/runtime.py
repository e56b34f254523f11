"""The ONNX Runtime session: normalised images and streams in, every output by name.

Which graph runs is the model directory's choice per execution provider (``provider_graph``
in metadata.json); pre- and post-processing live in server/pipeline.py and server/maps.py.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnxruntime as ort

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
        # ONNX Runtime sends usage events to Microsoft on Linux unless told not to (in the
        # image, where the user has no home, it also logs that it cannot keep a device id).
        ort.disable_telemetry_events()
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

    def close(self) -> None:
        """Let the session go (its weights and arenas): a retired version's memory goes back
        even while something still refers to this runtime. It cannot run after this."""
        self.session = None

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
