"""``--providers cuda``: the graph each provider runs is the one metadata.json's provider_graph
names. On CUDA the sparse (``com.microsoft.MoE``) graph; where the CUDA provider cannot start
(no GPU: onnxruntime-gpu falls back to the CPU), the CPU's graph, dense for the demo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from server.modeldir import load_model_dir
from server.runtime import ModelRuntime
from tests.server.conftest import image_bytes, random_image, start_server

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "demo" / "model"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
REAL_SESSION = ort.InferenceSession


class SessionTakingCuda:
    """An ONNX Runtime session that computes on the CPU but reports the CUDA provider taken,
    as a GPU machine would, and records which graph file it was opened on."""

    opened: list[str] = []

    def __init__(self, path, options=None, providers=()) -> None:
        SessionTakingCuda.opened.append(Path(path).name)
        self._session = REAL_SESSION(str(path), options, providers=[CPU])
        asked = [p if isinstance(p, str) else p[0] for p in providers]
        self._providers = [CUDA, CPU] if CUDA in asked else [CPU]

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def test_demo_metadata_maps_cuda_to_sparse_and_the_cpu_to_dense():
    metadata = json.loads((DEMO_MODEL / "metadata.json").read_text())
    assert metadata["provider_graph"] == {CUDA: "sparse", CPU: "dense"}
    model = load_model_dir(DEMO_MODEL)
    assert model.graph_for(CUDA).name == "model.sparse.onnx"
    assert model.graph_for(CPU).name == "model.dense.onnx"


def test_cuda_taken_runs_the_sparse_graph(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", SessionTakingCuda)
    SessionTakingCuda.opened.clear()
    runtime = ModelRuntime(load_model_dir(DEMO_MODEL), [CUDA])
    assert SessionTakingCuda.opened == ["model.sparse.onnx"]  # one session, on CUDA's graph
    assert runtime.provider == CUDA and runtime.graph.name == "model.sparse.onnx"
    runtime.warm_up(2)  # the graph runs with the server's inputs


def test_cuda_request_without_a_gpu_serves_the_dense_graph_on_the_cpu(tmp_path):
    assert CUDA in ort.get_available_providers(), "the serve extra installs onnxruntime-gpu"
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU is present: the CUDA provider would start")
    server = start_server(DEMO_MODEL, tmp_path, "--providers", "cuda")
    try:
        with server.client() as client:
            model = client.get("/v1/models").json()["models"][0]
            png = image_bytes(random_image(0))
            body = client.post(
                "/predict?tasks=semseg", content=png, headers={"Content-Type": "image/png"}
            ).json()
    finally:
        server.stop()
    assert model["providers"] == [CPU] and model["graph"] == "model.dense.onnx"
    assert body["provider"] == CPU and body["tasks"]["semseg"]["shape"] == [40, 56]
