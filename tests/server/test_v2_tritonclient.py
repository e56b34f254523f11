"""The Open Inference Protocol with the official client, tritonclient 2.73, against the real
server on 127.0.0.1 (one per module, tiny model, REST on the HTTP port and gRPC on its own, an
API key): sync HTTP, asyncio HTTP, gRPC and asyncio gRPC; binary and JSON tensors; metadata;
every task alone and subsets, each map equal to what ``/predict`` answers for the same upload;
raw-pixel batches of N frames; concurrent clients batched together; the API key; ``/metrics``
by protocol, and the router counters moving as they do for ``/predict``."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from server.modeldir import load_model_dir
from server.v2.interface import model_metadata
from tests.server.conftest import image_bytes, metric, png_pixels, random_image, start_v2_server

KEY = "v2-test-key"
# tritonclient adds its own headers to the dict it is given: every call gets a copy
HTTP_KEY = {"X-API-Key": KEY}


def http_key() -> dict[str, str]:
    return dict(HTTP_KEY)


def grpc_key() -> dict[str, str]:
    return {"x-api-key": KEY}


ROUTER = ("expert_tokens", "shared_gate_mass")
TASKS = ("semseg", "parts", "saliency", "normals", "edges")
CLIENTS = ("http", "aio", "grpc", "grpc-aio")
MESSAGE = 64 * 2**20
CHANNEL = [("grpc.max_receive_message_length", MESSAGE), ("grpc.max_send_message_length", MESSAGE)]


@pytest.fixture(scope="module")
def v2(model_dir, logs):
    server = start_v2_server(
        model_dir, logs, "--max-batch", "8", "--max-wait-ms", "40", "--api-key", KEY
    )
    server.model = load_model_dir(model_dir)
    yield server
    server.stop()


def module_of(client: str):
    return grpcclient if client.startswith("grpc") else httpclient


def image_input(client: str, data: bytes, binary: bool = True):
    module = module_of(client)
    tensor = module.InferInput("image", [1], "BYTES")
    element = data if binary or module is grpcclient else base64.b64encode(data)
    options = {} if module is grpcclient else {"binary_data": binary}
    tensor.set_data_from_numpy(np.array([element], dtype=object), **options)
    return tensor


def pixels_input(client: str, frames: np.ndarray, binary: bool = True):
    module = module_of(client)
    tensor = module.InferInput("pixels", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames, **({} if module is grpcclient else {"binary_data": binary}))
    return tensor


def requested(client: str, names, binary: bool = True):
    if names is None:
        return None
    module = module_of(client)
    options = {} if module is grpcclient else {"binary_data": binary}
    return [module.InferRequestedOutput(name, **options) for name in names]


def infer(server, client: str, tensor, outputs=None, binary=True, **kwargs) -> dict:
    """One call with tritonclient's ``client`` kind; every output as (datatype, array), and the
    router outputs' ``tasks`` parameter under ``"tasks"``."""
    wanted = requested(client, outputs, binary)
    if client == "http":
        with httpclient.InferenceServerClient(server.url[7:], network_timeout=60) as http:
            result = http.infer(
                server.model.name, [tensor], outputs=wanted, headers=http_key(), **kwargs
            )
    elif client == "grpc":
        with grpcclient.InferenceServerClient(server.grpc, channel_args=CHANNEL) as grpc:
            result = grpc.infer(
                server.model.name, [tensor], outputs=wanted, headers=grpc_key(), **kwargs
            )
    else:
        result = asyncio.run(infer_async(server, client, tensor, wanted, **kwargs))
    return outputs_of(result)


async def infer_async(server, client: str, tensor, wanted, **kwargs):
    if client == "aio":
        aio = httpaio.InferenceServerClient(server.url[7:])
        headers = http_key()
    else:
        aio = grpcaio.InferenceServerClient(server.grpc, channel_args=CHANNEL)
        headers = grpc_key()
    try:
        return await aio.infer(
            server.model.name, [tensor], outputs=wanted, headers=headers, **kwargs
        )
    finally:
        await aio.close()


def outputs_of(result) -> dict:
    response = result.get_response()
    entries = response["outputs"] if isinstance(response, dict) else response.outputs
    outputs, tasks = {}, None
    for entry in entries:
        name = entry["name"] if isinstance(entry, dict) else entry.name
        datatype = entry["datatype"] if isinstance(entry, dict) else entry.datatype
        outputs[name] = (datatype, result.as_numpy(name))
        if name in ROUTER:
            parameters = (
                entry.get("parameters", {})
                if isinstance(entry, dict)
                else {key: value.string_param for key, value in entry.parameters.items()}
            )
            tasks = parameters["tasks"]
    return {"outputs": outputs, "tasks": tasks}


def predict(server, body: bytes) -> dict:
    """/predict for the same upload: every task, router statistics, JSON (PNG maps)."""
    headers = {"Content-Type": "image/png", **HTTP_KEY}
    response = httpx.post(
        f"{server.url}/predict",
        params={"router_stats": "true"},
        content=body,
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_as_predict(frame_outputs: dict, predicted: dict, tasks: list[str]) -> None:
    """One frame's V2 outputs against /predict's answer (``tasks``: those computed, the router
    rows' order): class ids identical, probabilities and normals within the PNG's rounding
    (half a step of 255), router statistics equal."""
    for name in (t for t in tasks if t in frame_outputs):
        entry = predicted["tasks"][name]
        value, wire = frame_outputs[name], png_pixels(entry["data"]).astype(np.float64)
        if entry["kind"] == "classes":
            assert value.dtype == np.uint8 and np.array_equal(value, wire), name
            continue
        assert value.dtype == np.float32 and value.shape == wire.shape, name
        scaled = value * 255.0 if entry["kind"] == "probability" else (value + 1.0) * 127.5
        assert np.abs(scaled - wire).max() <= 0.5 + 1e-3, name
    for row, name in enumerate(tasks):
        router = predicted["router"][name]
        if "expert_tokens" in frame_outputs:
            assert frame_outputs["expert_tokens"][row].tolist() == router["expert_tokens"], name
        if "shared_gate_mass" in frame_outputs:
            share = frame_outputs["shared_gate_mass"][row] / router["tokens_per_layer"]
            np.testing.assert_allclose(share, router["shared_gate_share"], rtol=1e-5)


def test_metadata_and_health_with_every_client(v2):
    ours = model_metadata(v2.model)
    with httpclient.InferenceServerClient(v2.url[7:]) as http:
        assert http.is_server_live() and http.is_server_ready()
        assert http.is_model_ready(v2.model.name, headers=http_key())
        assert http.is_model_ready(v2.model.name, v2.model.version, headers=http_key())
        assert "binary_tensor_data" in http.get_server_metadata(headers=http_key())["extensions"]
        assert http.get_model_metadata(v2.model.name, headers=http_key()) == ours
        versioned = http.get_model_metadata(v2.model.name, v2.model.version, headers=http_key())
        assert versioned == ours
    with grpcclient.InferenceServerClient(v2.grpc) as grpc:
        assert grpc.is_server_live() and grpc.is_server_ready()
        assert grpc.is_model_ready(v2.model.name, headers=grpc_key())
        server = grpc.get_server_metadata(headers=grpc_key(), as_json=True)
        assert "binary_tensor_data" in server["extensions"]
        document = grpc.get_model_metadata(v2.model.name, headers=grpc_key(), as_json=True)
    for key in ("inputs", "outputs"):  # gRPC's JSON form writes int64 shapes as strings
        for tensor in document[key]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert {k: document[k] for k in ("name", "versions", "platform", "inputs", "outputs")} == {
        k: ours[k] for k in ("name", "versions", "platform", "inputs", "outputs")
    }

    async def aio_metadata():
        aio = httpaio.InferenceServerClient(v2.url[7:])
        try:
            return await aio.get_model_metadata(v2.model.name, headers=http_key())
        finally:
            await aio.close()

    assert asyncio.run(aio_metadata()) == ours


# (client, binary tensors, outputs requested: None lists none, so every output comes back)
CALLS = [
    *(("http", True, (task,)) for task in TASKS),
    ("http", False, ("semseg", "normals", *ROUTER)),
    ("http", True, None),
    ("aio", True, ("parts", "saliency", "edges", "expert_tokens")),
    ("aio", False, ("edges",)),
    ("grpc", True, None),
    ("grpc", True, ("normals", "edges", *ROUTER)),
    ("grpc-aio", True, ("semseg", "shared_gate_mass", "expert_tokens")),
]


CALL_IDS = [f"{c}-{'bin' if b else 'json'}-{'+'.join(o) if o else 'all'}" for c, b, o in CALLS]


@pytest.mark.parametrize(("client", "binary", "outputs"), CALLS, ids=CALL_IDS)
def test_image_maps_equal_predicts(v2, client, binary, outputs):
    body = image_bytes(random_image(7))
    answer = infer(v2, client, image_input(client, body, binary), outputs, binary)
    names = list(outputs) if outputs else [*TASKS, *ROUTER]
    assert list(answer["outputs"]) == names  # in the order requested
    computed = [t for t in TASKS if t in names] or list(TASKS)  # no task named: every task
    if any(name in ROUTER for name in names):
        assert answer["tasks"] == ",".join(computed)
    datatypes = {"semseg": "UINT8", "parts": "UINT8"}
    for name, (datatype, value) in answer["outputs"].items():
        assert datatype == datatypes.get(name, "FP32")
        assert value.shape[:3] == ((1, 40, 56) if name in TASKS else (1, len(computed), 2))
    frame = {name: value[0] for name, (_, value) in answer["outputs"].items()}
    assert_same_as_predict(frame, predict(v2, body), computed)


@pytest.mark.parametrize(("client", "binary"), [("http", True), ("http", False), ("grpc", True)])
def test_pixel_frames_equal_predict_frame_by_frame(v2, client, binary):
    frames = np.stack([random_image(30 + i, height=24, width=36) for i in range(3)])
    names = ["semseg", "saliency", "normals", *ROUTER]
    answer = infer(v2, client, pixels_input(client, frames, binary), names, binary)
    assert answer["outputs"]["semseg"][1].shape == (3, 24, 36)
    assert answer["outputs"]["normals"][1].shape == (3, 24, 36, 3)
    for index, frame in enumerate(frames):
        predicted = predict(v2, image_bytes(frame))  # PNG: lossless, the same pixels
        outputs = {name: value[index] for name, (_, value) in answer["outputs"].items()}
        assert_same_as_predict(outputs, predicted, ["semseg", "saliency", "normals"])


def test_size_parameters_as_predicts(v2):
    body = image_bytes(random_image(8, height=60, width=120))
    bounded = infer(v2, "http", image_input("http", body), ["semseg"], parameters={"max_side": 40})
    assert bounded["outputs"]["semseg"][1].shape == (1, 20, 40)
    model = infer(v2, "grpc", image_input("grpc", body), ["normals"], parameters={"size": "model"})
    assert model["outputs"]["normals"][1].shape == (1, 32, 32, 3)  # the tiny model is 32 px
    both = {"size": "model", "max_side": 10}
    composed = infer(v2, "http", image_input("http", body), ["edges"], parameters=both)
    assert composed["outputs"]["edges"][1].shape == (1, 10, 10)


async def concurrently(server, calls):
    """Every call at once, half over asyncio HTTP and half over asyncio gRPC."""
    http = httpaio.InferenceServerClient(server.url[7:])
    grpc = grpcaio.InferenceServerClient(server.grpc, channel_args=CHANNEL)
    try:
        pending = []
        for index, (body, names) in enumerate(calls):
            client, headers = (http, http_key()) if index % 2 else (grpc, grpc_key())
            kind = "aio" if index % 2 else "grpc-aio"
            tensors, outputs = [image_input(kind, body)], requested(kind, names)
            pending.append(
                client.infer(server.model.name, tensors, outputs=outputs, headers=headers)
            )
        return [outputs_of(result) for result in await asyncio.gather(*pending)]
    finally:
        await http.close()
        await grpc.close()


def test_concurrent_clients_share_batches_and_get_their_own_answers(v2):
    task_sets = [
        ("semseg",),
        ("normals", "edges"),
        None,
        ("parts", *ROUTER),
        ("saliency",),
        ("semseg", "edges"),
        ("normals",),
        ("parts", "saliency"),
    ]
    calls = [(image_bytes(random_image(60 + i)), names) for i, names in enumerate(task_sets)]
    before = v2.metrics(**HTTP_KEY)
    together = asyncio.run(concurrently(v2, calls))
    after = v2.metrics(**HTTP_KEY)
    calls_made = metric(after, "ase_batch_size_count") - metric(before, "ase_batch_size_count")
    images = metric(after, "ase_batch_size_sum") - metric(before, "ase_batch_size_sum")
    assert images == len(calls) and calls_made < len(calls)  # requests really shared calls
    alone = [asyncio.run(concurrently(v2, [call]))[0]["outputs"] for call in calls]
    for batched, own in zip(together, alone, strict=True):
        assert list(batched["outputs"]) == list(own)
        for name, (datatype, value) in batched["outputs"].items():
            assert own[name][0] == datatype
            if value.dtype == np.uint8:  # class ids: exactly
                assert np.array_equal(own[name][1], value), name
            else:  # ORT's float sums vary in the last bits with the batch's size
                np.testing.assert_allclose(value, own[name][1], rtol=0, atol=1e-5, err_msg=name)
    # ... while another request's answer is far from it: a swap would fail the check above.
    for one, other in ((1, 6), (0, 5), (4, 7)):  # the same task in two requests
        task = next(t for t in alone[one] if t in alone[other])
        assert np.abs(alone[one][task][1].astype(float) - alone[other][task][1]).max() > 0.01


def test_api_key_over_rest_header_and_grpc_metadata(v2):
    body = image_bytes(random_image(9))
    with httpclient.InferenceServerClient(v2.url[7:]) as http:
        assert http.is_server_live()  # probes stay open
        with pytest.raises(InferenceServerException) as refused:
            http.infer(v2.model.name, [image_input("http", body)])
        assert refused.value.status() == "401"
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert http.get_model_metadata(v2.model.name, headers=bearer)["name"] == v2.model.name
    with grpcclient.InferenceServerClient(v2.grpc) as grpc:
        assert grpc.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            grpc.infer(v2.model.name, [image_input("grpc", body)], headers={"x-api-key": "no"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        bearer = {"authorization": f"Bearer {KEY}"}
        assert grpc.get_model_metadata(v2.model.name, headers=bearer).name == v2.model.name
    with httpx.Client(base_url=v2.url) as raw:
        answer = raw.get(f"/v2/models/{v2.model.name}")
    assert answer.status_code == 401 and isinstance(answer.json()["error"], str)


ROUTER_COUNTERS = (
    "ase_expert_tokens_total",
    "ase_stream_tokens_total",
    "ase_shared_gate_mass_total",
    "ase_task_requests_total",
)


def router_counters(values: dict) -> dict:
    return {key: value for key, value in values.items() if key[0] in ROUTER_COUNTERS}


def moved(before: dict, after: dict) -> dict:
    keys = router_counters(before).keys() | router_counters(after).keys()
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}


def test_metrics_by_protocol_and_router_counters_as_predicts(v2):
    """The same upload and tasks through /predict, V2 REST and gRPC: each request counted under
    its protocol, and each moves every router counter by the same amounts."""
    body = image_bytes(random_image(10))
    steps = {
        "native": lambda: httpx.post(
            f"{v2.url}/predict",
            params={"tasks": "semseg,edges"},
            content=body,
            headers={"Content-Type": "image/png", **HTTP_KEY},
            timeout=60,
        ),
        "v2": lambda: infer(v2, "http", image_input("http", body), ["semseg", "edges"]),
        "grpc": lambda: infer(v2, "grpc", image_input("grpc", body), ["edges", "semseg"]),
    }
    deltas, requests = {}, {}
    for protocol, step in steps.items():
        before = v2.metrics(**HTTP_KEY)
        step()
        after = v2.metrics(**HTTP_KEY)
        deltas[protocol] = moved(before, after)
        requests[protocol] = {
            labels: after[(name, labels)] - before.get((name, labels), 0.0)
            for (name, labels) in after
            if name == "ase_requests_total"
            and dict(labels)["protocol"] == protocol
            and dict(labels)["endpoint"] != "/metrics"  # the scrapes themselves
            and after[(name, labels)] != before.get((name, labels), 0.0)
        }
    assert deltas["native"] == deltas["v2"] == deltas["grpc"]
    task_requests = {
        dict(k[1])["task"]: v
        for k, v in deltas["v2"].items()
        if k[0] == "ase_task_requests_total" and v
    }
    assert task_requests == {"semseg": 1.0, "edges": 1.0}
    served = {"model": v2.model.name, "version": v2.model.version}  # each request's model
    assert requests["native"] == {
        frozenset(
            {"protocol": "native", "endpoint": "/predict", "status": "200", **served}.items()
        ): 1.0
    }
    assert requests["v2"] == {
        frozenset(
            {
                "protocol": "v2",
                "endpoint": "/v2/models/{model}/infer",
                "status": "200",
                **served,
            }.items()
        ): 1.0
    }
    assert requests["grpc"] == {
        frozenset(
            {"protocol": "grpc", "endpoint": "ModelInfer", "status": "200", **served}.items()
        ): 1.0
    }
