"""Model control in one process (server/model_control.py), on contract-conforming fake models in a
repository under a temporary folder: routing by name and version, the swap to a new version,
failed loads that leave what serves untouched (and say why in the index), reloads of rewritten
files, unloads that wait for the requests holding a version, the model memory budget, and an
unloaded version's metric series gone. Real servers and clients: test_repository_server.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from export.contract import file_sha256
from server.errors import InvalidInput, NotFound, Unavailable
from server.model_control import ModelControl
from server.pipeline import MapRequest
from server.settings import Settings
from tests.server.conftest import image_bytes, random_image
from tests.server.fake_model import write_fake_model_dir


def settings_for(root: Path, **changes) -> Settings:
    base = dict(
        model_repository=root,
        model_control_mode="explicit",
        providers="cpu",
        threads=1,
        render_threads=1,
        max_batch=2,
        log_level="warning",
    )
    return Settings(**{**base, **changes})


def break_graph(model_dir: Path) -> None:
    """A graph ONNX Runtime cannot load, whose hash metadata.json still matches."""
    metadata = json.loads((model_dir / "metadata.json").read_text())
    entry = metadata["graphs"]["dense"]
    (model_dir / entry["file"]).write_bytes(b"not an onnx graph" * 64)
    entry["sha256"] = file_sha256(model_dir / entry["file"])
    (model_dir / "metadata.json").write_text(json.dumps(metadata))


def run(settings: Settings, scenario) -> None:
    """``scenario(control)`` on a started ModelControl, stopped after."""

    async def main() -> None:
        control = ModelControl(settings)
        await control.start()
        try:
            await scenario(control)
        finally:
            await control.stop(5)

    asyncio.run(main())


async def answer(control: ModelControl, name: str | None = None, version: str | None = None):
    """One image through the version the control gives (name, version): its semseg map."""
    state = control.resolve(name, version)
    tasks = (state.model.task("semseg"),)
    deadline = time.monotonic() + 30
    prediction = await state.pipeline.predict(
        image_bytes(random_image(3)), MapRequest(tasks), deadline, asyncio.Event().wait
    )
    prediction.reservation.release()
    return state.version, prediction.result.maps["semseg"].argmax(0)


def rows(index: list[dict]) -> list[tuple[str, str, str]]:
    return [(row["name"], row["version"], row["state"]) for row in index]


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    write_fake_model_dir(root / "fake" / "1", seed=1)
    write_fake_model_dir(root / "fake" / "2", seed=2)
    write_fake_model_dir(root / "bare", tasks=("semseg", "edges"), seed=3)
    return root


def test_requests_choose_a_model_and_version_and_hear_what_exists(repo):
    async def scenario(control: ModelControl) -> None:
        assert rows(await control.index()) == [
            ("bare", "1", "READY"),
            ("fake", "1", "READY"),
            ("fake", "2", "READY"),
        ]
        assert control.default_name() == "bare"  # the first by name
        assert control.resolve().name == "bare"
        assert control.resolve("fake").version == "2"  # the highest
        one_budget = {id(control.resolve(n, v).budget) for n, v in (("bare", "1"), ("fake", "1"))}
        batchers = {id(control.resolve(n, v).batcher) for n, v in (("fake", "1"), ("fake", "2"))}
        assert len(one_budget) == 1 and len(batchers) == 2  # a budget for all, a batcher each
        one, two = await answer(control, "fake", "1"), await answer(control, "fake")
        assert (one[0], two[0]) == ("1", "2") and (one[1] != two[1]).any()  # two models
        with pytest.raises(
            NotFound, match=r"unknown model 'nope'; .*'bare' \(1\), 'fake' \(1, 2\)"
        ):
            control.resolve("nope")
        with pytest.raises(NotFound, match="no version '3' ready; it serves version.s. 1, 2"):
            control.resolve("fake", "3")
        assert control.is_ready("fake", "1")
        with pytest.raises(NotFound):
            control.is_ready("fake", "3")

    run(settings_for(repo, model_version_policy="all"), scenario)


def test_a_new_version_takes_over_and_the_old_one_goes_once_its_requests_finish(repo):
    (repo / "fake" / "2").rename(repo / "fake" / ".2")  # hidden: version 1 serves at start

    async def scenario(control: ModelControl) -> None:
        old = control.resolve("fake", "1")
        old.acquire()  # a request in flight on version 1
        write_fake_model_dir(repo / "fake" / "3", seed=3)
        await control.load("fake")
        assert control.resolve("fake").version == "3"  # new requests go to the new version
        with pytest.raises(NotFound, match="it serves version.s. 3"):
            control.resolve("fake", "1")
        assert ("fake", "1", "UNLOADING") in rows(await control.index())
        for _ in range(20):  # the drain waits for the request, however long the loop turns
            await asyncio.sleep(0)
        assert old.runtime.session is not None and old.in_flight == 1
        old.release()
        await asyncio.gather(*control._retiring)
        assert old.runtime.session is None  # its weights went with its session
        index = await control.index()
        assert {
            "name": "fake",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        } in index

    run(settings_for(repo, model_version_policy="latest:1"), scenario)


def test_a_broken_version_leaves_the_old_one_serving_and_says_why(repo):
    (repo / "fake" / "2").rename(repo / "fake" / ".2")

    async def scenario(control: ModelControl) -> None:
        before = await answer(control, "fake")
        write_fake_model_dir(repo / "fake" / "2", seed=2)
        break_graph(repo / "fake" / "2")
        with pytest.raises(InvalidInput, match="version 2: ONNX Runtime cannot load"):
            await control.load("fake")
        after = await answer(control, "fake")
        assert after[0] == before[0] == "1" and (after[1] == before[1]).all()
        broken = [row for row in await control.index() if row["version"] == "2"]
        assert broken[0]["state"] == "UNAVAILABLE"
        assert "ONNX Runtime cannot load" in broken[0]["reason"]
        write_fake_model_dir(repo / "fake" / "2", seed=2)  # fixed: the same version again
        await control.load("fake")
        assert control.resolve("fake").version == "2" and control.versions("fake") == ["2"]

    run(settings_for(repo), scenario)


def test_rewritten_files_of_a_served_version_are_loaded_again(repo):
    async def scenario(control: ModelControl) -> None:
        first = control.resolve("bare")
        before = await answer(control, "bare")
        write_fake_model_dir(repo / "bare", tasks=("semseg", "edges"), seed=9)
        await control.load("bare")
        assert control.resolve("bare") is not first
        after = await answer(control, "bare")
        assert after[0] == "1" and (after[1] != before[1]).any()
        await control.load("bare")  # nothing changed: nothing reloaded
        assert control.resolve("bare") is control.resolve("bare", "1")

    run(settings_for(repo), scenario)


def test_weights_past_the_model_memory_budget_are_refused_and_a_swap_counts_both(tmp_path):
    root = tmp_path / "repo"
    write_fake_model_dir(root / "big" / "1", ballast_mb=4, seed=1)

    async def scenario(control: ModelControl) -> None:
        write_fake_model_dir(root / "big" / "2", ballast_mb=4, seed=2)
        with pytest.raises(InvalidInput, match="about 4 MiB .* 4 MiB of the model memory budget"):
            await control.load("big")
        assert control.resolve("big").version == "1"
        await control.unload("big")  # explicit mode: unload first, then load
        await control.load("big")
        assert control.resolve("big").version == "2"

    run(settings_for(root, model_memory_mb=6), scenario)


def test_an_unloaded_versions_metric_series_are_removed(repo):
    async def scenario(control: ModelControl) -> None:
        await answer(control, "fake")
        control.flush_router()
        text = control.metrics.render()[0].decode()
        assert 'ase_task_requests_total{model="fake",task="semseg",version="2"} 1.0' in text
        assert 'ase_model_info{adapters="16/3/1/4"' in text
        await control.unload("fake")
        text = control.metrics.render()[0].decode()
        assert 'model="fake"' not in text and 'model="bare"' in text
        with pytest.raises(NotFound, match="unknown model 'fake'; this server serves 'bare'"):
            control.resolve("fake")

    run(settings_for(repo), scenario)


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_need_explicit_mode(repo, mode):
    async def scenario(control: ModelControl) -> None:
        for call in (control.load, control.unload):
            with pytest.raises(Unavailable, match=f"not allowed: .* --model-control-mode {mode}"):
                await call("fake")

    run(settings_for(repo, model_control_mode=mode), scenario)
