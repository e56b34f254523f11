"""A real Triton (tritonserver 2.51 from nvidia-pytriton, CPU only, 127.0.0.1) serves the demo
model through bench/triton_reference.py; bench/v2_client.py's sequence runs against it with
tritonclient. Checked: the metadata declares the interface of docs/api_v2.md, every output has
the promised name, datatype and shape, and every map equals the project's own post-processing
of ONNX Runtime's outputs for the same input. Then the conformance cross-check: the same script
against our server (REST and gRPC, the demo model) gives the same metadata structure, output
names, datatypes, shapes and values; where Triton and we legitimately differ, a test says how.
The venv comes from ``make triton-venv``; when it cannot be built the tests fail under CI=true
(skip elsewhere)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from tritonclient.utils import InferenceServerException

from bench import v2_client
from server.codecs import decode_image
from server.maps import restore_size
from server.modeldir import load_model_dir
from server.pipeline import MapSize, preprocess
from server.runtime import ModelRuntime
from server.v2.interface import model_metadata
from tests.server.conftest import free_port, start_v2_server

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
SAMPLE = REPO / "demo" / "samples" / "scene_0.png"
VENV_BUILD_TIMEOUT_S = 900  # a clean machine downloads ~150 MB of wheels
READY_TIMEOUT_S = 120


def build_triton_venv() -> None:
    """``make triton-venv`` with this venv's ONNX Runtime version (same kernels, same values)."""
    command = ["make", "-s", "triton-venv", f"TRITON_ORT={onnxruntime.__version__}"]
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=VENV_BUILD_TIMEOUT_S
        )
        problem = None if done.returncode == 0 else (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        problem = f"make triton-venv took over {VENV_BUILD_TIMEOUT_S} s"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Triton venv cannot be built: {problem}")
        pytest.skip(f"the Triton venv cannot be built here: {problem}")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    build_triton_venv()
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    process = subprocess.Popen(
        [
            str(TRITON_PYTHON),
            "-m",
            "bench.triton_reference",
            "--model-dir",
            "demo/model",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--threads",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ready = threading.Event()
    threading.Thread(target=_drain, args=(process, log, ready), daemon=True).start()
    try:
        if not ready.wait(READY_TIMEOUT_S):
            pytest.fail(f"Triton not ready in {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        _stop(process)


def _drain(process: subprocess.Popen, log: Path, ready: threading.Event) -> None:
    """Copy the reference's output to its log (a full pipe would stall it); flag its ready line.

    Anywhere in a line, not at its start: tritonserver shares the pipe and writes a log line in
    pieces, and the script's ready line (one short write: whole) once landed inside one
    ("successfully loaded 'ase-demready http=..." ), so the fixture waited out its 120 s."""
    with log.open("wb") as sink:
        for line in process.stdout:
            sink.write(line)
            sink.flush()
            if b"ready http=" in line:
                ready.set()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the script stops Triton and its backend stub
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: tritonserver too
            process.wait()


@pytest.fixture(scope="module")
def sequence(triton):
    frames = v2_client.sample_frames(SAMPLE)
    return v2_client.run_sequence(*triton, "ase-demo", SAMPLE.read_bytes(), frames), frames


MODEL = load_model_dir(REPO / "demo" / "model")


def test_metadata_declares_our_interface(sequence):
    steps, _ = sequence
    ours = model_metadata(MODEL)
    for transport in ("http", "grpc"):
        document = steps[f"model_metadata/{transport}"].document
        assert document["name"] == MODEL.name
        assert document["inputs"] == ours["inputs"] and document["outputs"] == ours["outputs"]
        # Differences that are Triton's: its model version is "1", its platform "python".
        assert (document["versions"], document["platform"]) == (["1"], "python")
        extensions = steps[f"server_metadata/{transport}"].document["extensions"]
        assert "binary_tensor_data" in extensions
    assert steps["health"].document == {"http": [True] * 3, "grpc": [True] * 3}


def test_outputs_equal_the_projects_post_processing(sequence):
    steps, frames = sequence
    runtime = ModelRuntime(MODEL, ["CPUExecutionProvider"], threads=1)
    tasks = [t.name for t in MODEL.tasks]
    upload = decode_image(SAMPLE.read_bytes(), max_pixels=2**26)
    for call in v2_client.calls(tasks):
        sent = [upload] if call.input == "image" else list(v2_client.call_frames(call, frames))
        names = call.outputs or (*tasks, *v2_client.ROUTER)
        expected = expected_outputs(runtime, sent, names, call.parameters or {})
        got = steps[call.name].outputs
        assert list(got) == list(names), call.name
        for name, (datatype, value) in expected.items():
            got_type, got_value = got[name]
            assert (got_type, got_value.dtype, got_value.shape) == (
                datatype,
                value.dtype,
                value.shape,
            ), f"{call.name}/{name}"
            if value.dtype == np.uint8:
                np.testing.assert_array_equal(got_value, value, err_msg=f"{call.name}/{name}")
            else:
                np.testing.assert_allclose(
                    got_value, value, atol=1e-5, rtol=0, err_msg=f"{call.name}/{name}"
                )


def expected_outputs(runtime, rgb_frames, names, parameters) -> dict:
    """Each frame alone through ONNX Runtime with every task, then the server's own
    post-processing (server/maps.py): what the requested outputs must hold, stacked."""
    wanted = [t for t in MODEL.tasks if t.name in names] or list(MODEL.tasks)
    size = MapSize(parameters.get("size") == "model", parameters.get("max_side"))
    width, height = size.resolve(rgb_frames[0].shape[1], rgb_frames[0].shape[0], MODEL)
    ids = np.array([t.id for t in MODEL.tasks], np.int64)
    rows = [t.id for t in wanted]  # the streams of the requested tasks, in registry order
    per_frame = []
    for rgb in rgb_frames:
        raw = runtime.run(preprocess(rgb, MODEL)[None], np.zeros(len(ids), np.int64), ids)
        outputs = {t.name: restore_size(t.kind, raw[t.name][0], width, height) for t in wanted}
        outputs["expert_tokens"] = raw["expert_tokens"][rows]
        outputs["shared_gate_mass"] = raw["shared_gate_mass"][rows]
        per_frame.append(outputs)
    datatypes = {"expert_tokens": "FP32", "shared_gate_mass": "FP32"}
    datatypes.update({t.name: "UINT8" if t.kind == "classes" else "FP32" for t in MODEL.tasks})
    return {
        name: (datatypes[name], np.stack([frame[name] for frame in per_frame])) for name in names
    }


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    server = start_v2_server(REPO / "demo" / "model", tmp_path_factory.mktemp("ours"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def our_sequence(ours):
    frames = v2_client.sample_frames(SAMPLE)
    return v2_client.run_sequence(ours.url[7:], ours.grpc, "ase-demo", SAMPLE.read_bytes(), frames)


def test_one_script_gets_the_same_answers_from_both(sequence, our_sequence):
    """bench/v2_client.py's compare: every step, output name, datatype, shape; ids identical,
    floats within 1e-5; metadata documents with the same keys (our ``tasks`` aside), inputs,
    outputs and health, and binary_tensor_data advertised by both."""
    theirs, _ = sequence
    assert len(our_sequence) == len(theirs) == 5 + len(v2_client.calls(list(MODEL.task_names)))
    assert v2_client.compare(our_sequence, theirs) == []


def test_where_triton_and_we_legitimately_differ(sequence, our_sequence, triton, ours):
    theirs, _ = sequence
    for transport in ("http", "grpc"):
        mine = our_sequence[f"model_metadata/{transport}"].document
        other = theirs[f"model_metadata/{transport}"].document
        # The model version: both the repository's (a model directory alone is version 1).
        assert mine["versions"] == other["versions"] == ["1"]
        # The platform: ours an ONNX model's protocol name, Triton's the Python backend's.
        assert (mine["platform"], other["platform"]) == ("onnx_onnxv1", "python")
    # Our REST metadata adds what each task output means (gRPC has no room for it).
    assert "tasks" in our_sequence["model_metadata/http"].document
    assert "tasks" not in theirs["model_metadata/http"].document
    # Output parameters: ours names the computed tasks on the router outputs; Triton sends none.
    image = SAMPLE.read_bytes()
    assert router_parameters(ours.url[7:], image) == {"tasks": "semseg,normals"}
    assert router_parameters(triton[0], image) == {}
    # A failure in the model (an image input that is no image): our 400, Triton's 500 (its
    # Python backend's errors are internal errors to it).
    assert failure_status(ours.url[7:]) == "400"
    assert failure_status(triton[0]) == "500"


def router_parameters(url: str, image: bytes) -> dict:
    call = v2_client.Call("router", "http", "image", ("semseg", "normals", "expert_tokens"))
    client = v2_client.httpclient.InferenceServerClient(url)
    try:
        inputs, outputs = v2_client.build_request(v2_client.httpclient, call, image, None)
        result = client.infer("ase-demo", inputs, outputs=outputs)
    finally:
        client.close()
    parameters = result.get_output("expert_tokens").get("parameters", {})
    return {k: v for k, v in parameters.items() if k != "binary_data_size"}  # the extension's


def failure_status(url: str) -> str:
    client = v2_client.httpclient.InferenceServerClient(url)
    call = v2_client.Call("junk", "http", "image")
    try:
        inputs, _ = v2_client.build_request(v2_client.httpclient, call, b"no image here" * 8, None)
        with pytest.raises(InferenceServerException) as failed:
            client.infer("ase-demo", inputs)
    finally:
        client.close()
    return failed.value.status()


def test_bench_v2_runs_both_servers_in_alternating_rounds(triton, tmp_path):
    """bench/bench_v2.py end to end with tiny counts (this checks the script, not the speed):
    it starts both servers itself, and its summary is what its rounds say."""
    out = tmp_path / "v2.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_v2",
            "--image",
            "64x48",
            "--concurrency",
            "1,2",
            "--rounds",
            "2",
            "--requests",
            "3",
            "--warmup",
            "1",
            "--triton-threads",
            "1",
            "--server-flags",
            "--threads 1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["image"], r["concurrency"]) for r in results] == [("64x48", 1), ("64x48", 2)]
    for result in results:
        ours, theirs = result["rounds"]["ours"], result["rounds"]["triton"]
        assert len(ours) == len(theirs) == 2
        ratios = [a["throughput"] / b["throughput"] for a, b in zip(ours, theirs, strict=True)]
        assert result["ratio"]["throughput"] == round(float(np.median(ratios)), 3)
        assert all(r["p99"] >= r["p50"] > 0 for r in ours + theirs)
    assert "| 64x48 | 2 |" in done.stdout  # the table docs/benchmarks.md shows
