"""The one schema of metadata.json (export/contract.py): its rules, the same for the exporter's
reader and the server's, on a directory the schema itself wrote; and the torch-free imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.contract import METADATA_FILE, MetadataError, read_metadata
from server.modeldir import ModelDirError, load_model_dir
from tests.server.fake_model import write_fake_model_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    return write_fake_model_dir(tmp_path_factory.mktemp("contract") / "fake")


def short_palette(data):
    data["tasks"][0]["palette"].pop()  # semseg: 6 classes, 5 colours


def palette_on_a_probability_task(data):
    data["tasks"][2]["palette"] = [[0, 0, 0]]


def colour_out_of_range(data):
    data["tasks"][1]["palette"][1] = [256, 0, 0]


def no_graph_hash(data):
    del data["graphs"]["dense"]["sha256"]


def null_graph_hash(data):
    data["graphs"]["dense"]["sha256"] = None


def short_graph_hash(data):
    data["graphs"]["dense"]["sha256"] = "abc123"


def graph_outside_the_directory(data):
    data["graphs"]["dense"]["file"] = "../model.dense.onnx"


def provider_to_a_missing_graph(data):
    data["provider_graph"]["CPUExecutionProvider"] = "sparse"


def outputs_reversed(data):
    data["io"]["outputs"].reverse()


def task_id_off(data):
    data["tasks"][1]["id"] = 3


def tasks_out_of_order(data):
    data["tasks"].reverse()


def wrong_shared_experts(data):
    data["adapters"]["shared_experts"] = [0]


def unknown_routing(data):
    data["adapters"]["routing"] = "dense"


def unknown_key(data):
    data["adapters"]["raw"] = {}


def newer_schema(data):
    data["schema_version"] = 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            short_palette,
            "needs one class name and one palette colour per channel (6), got 6 "
            "names and 5 colours",
        ),
        (palette_on_a_probability_task, "only 'classes' tasks have class names and a palette"),
        (colour_out_of_range, "tasks.1.palette.1.0: Input should be less than or equal to 255"),
        (no_graph_hash, "graphs.dense.sha256: Field required"),
        (null_graph_hash, "graphs.dense.sha256: Input should be a valid string"),
        (short_graph_hash, "graphs.dense.sha256: String should match pattern"),
        (graph_outside_the_directory, "graphs.dense.file: String should match pattern"),
        (provider_to_a_missing_graph, "maps CPUExecutionProvider to 'sparse'"),
        (outputs_reversed, "io.outputs must be"),
        (task_id_off, "id/kind 3/classes disagree with the registry"),
        (tasks_out_of_order, "by increasing id"),
        (wrong_shared_experts, "shared_experts must be the last 1 expert indices"),
        (unknown_routing, "adapters.routing: Input should be 'ase', 'moe'"),
        (unknown_key, "adapters.raw: Extra inputs are not permitted"),
        (newer_schema, "schema_version 2 is not supported"),
    ],
)
def test_export_and_server_refuse_the_same_broken_metadata(fake_dir, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(fake_dir, broken)
    data = json.loads((broken / METADATA_FILE).read_text())
    damage(data)
    (broken / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(MetadataError) as exported:
        read_metadata(broken)
    with pytest.raises(ModelDirError) as served:
        load_model_dir(broken)
    assert message in str(exported.value)
    assert str(served.value) == str(exported.value)


def test_a_changed_graph_fails_its_hash(fake_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(fake_dir, changed)
    graph = changed / "model.dense.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelDirError, match="model.dense.onnx hash differs"):
        load_model_dir(changed)
    assert load_model_dir(changed, verify_hashes=False).graphs == {"dense": graph}


def test_the_schema_writes_what_it_reads(fake_dir):
    text = (fake_dir / METADATA_FILE).read_text()
    metadata = read_metadata(fake_dir)
    assert metadata.to_json() == text
    model = load_model_dir(fake_dir)
    assert model.metadata == metadata and model.adapters.routed == 15
    assert model.task("parts").palette == metadata.tasks[1].palette
    assert len(model.task("semseg").palette) == len(model.task("semseg").classes) == 6


def test_export_metadata_imports_without_torch_pil_or_scipy():
    probe = (
        "import sys; import export.metadata, server.modeldir; "
        "heavy = {'torch', 'PIL', 'scipy'} & {m.split('.')[0] for m in sys.modules}; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
