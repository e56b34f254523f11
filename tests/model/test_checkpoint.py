"""Checkpoints rebuild their own model; bad files fail with a named error."""

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.tasks import TASK_NAMES
from tests.model.tiny import images, tiny_config, tiny_model


def test_round_trip_rebuilds_an_identical_model(tmp_path):
    model = tiny_model("ase", spec="8/3/1/2")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    path = save_checkpoint(
        tmp_path / "run" / "ckpt.pt", model, optimizer, step=7, metrics={"m": 1.5}
    )
    loaded, payload = load_checkpoint(path)
    assert loaded.config == model.config
    assert payload["step"] == 7 and payload["metrics"] == {"m": 1.5}
    assert payload["format_version"] == 1 and payload["optimizer"] is not None
    assert [t["name"] for t in payload["registry"]["tasks"]] == list(TASK_NAMES)
    expected = model.eval().forward_tasks(images(), TASK_NAMES)
    got = loaded.forward_tasks(images(), TASK_NAMES)
    for task, raw in expected.maps.items():
        assert torch.equal(got.maps[task], raw)
    assert not (tmp_path / "run" / "ckpt.pt.tmp").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def _write(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "not a checkpoint"),
        ({"model": {}}, "not a checkpoint"),
        ({"format_version": 99, "config": {}, "model": {}}, "format_version 99"),
        ({"format_version": 1, "model": {}}, "no config"),
        ({"format_version": 1, "config": {"adapters": {"spec": "x"}}, "model": {}}, "bad config"),
    ],
)
def test_malformed_payloads(tmp_path, payload, message):
    with pytest.raises(ValueError, match=message):
        load_checkpoint(_write(tmp_path / "c.pt", payload))


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", tiny_model("ase"))
    payload = torch.load(path, weights_only=True)
    other = tiny_config("ase", spec="16/3/1/4")  # different expert bank, same backbone
    payload["config"] = other.to_dict()
    payload["registry"] = None
    with pytest.raises(ValueError, match="do not match the stored config"):
        load_checkpoint(_write(path, payload))


def test_registry_change_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", tiny_model("none"))
    payload = torch.load(path, weights_only=True)
    payload["registry"]["tasks"][0]["classes"] = ["a", "b"]
    with pytest.raises(ValueError, match="registry changed"):
        load_checkpoint(_write(path, payload))
    assert ModelConfig.from_dict(payload["config"]).adapters.routing == "none"
