"""The batcher with several model instances: batches run side by side, one fills while another
computes, each request still gets exactly its own rows, and stop waits for every instance."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batching import Batcher
from server.metrics import ServerMetrics
from server.modeldir import load_model_dir
from server.runtime import ModelRuntime
from tests.server.conftest import random_image

WAIT_S = 60  # only a broken batcher waits this long: the events below arrive at once otherwise


class Instance:
    """A real ORT session that records the batches it ran and can be held inside a call."""

    def __init__(self, runtime: ModelRuntime, hold: threading.Barrier | None = None) -> None:
        self.runtime, self.hold, self.batches = runtime, hold, []

    def run(self, images, stream_image, stream_task):
        self.batches.append(len(images))
        if self.hold is not None:
            self.hold.wait(WAIT_S)  # broken (an exception) unless the other instance arrives too
        return self.runtime.run(images, stream_image, stream_task)


@pytest.fixture(scope="module")
def runtimes(model_dir):
    model = load_model_dir(model_dir)
    return model, [ModelRuntime(model, ["CPUExecutionProvider"], threads=1) for _ in range(2)]


def preprocessed(model, seed: int) -> np.ndarray:
    pixels = random_image(seed, height=model.height, width=model.width).astype(np.float32) / 255
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


async def serve(model, instances, jobs, max_batch: int):
    """Every (image, task ids) of ``jobs`` queued at once; their results, in order."""
    metrics = ServerMetrics(model, "CPUExecutionProvider")
    batcher = Batcher([i.run for i in instances], model, metrics, max_batch, 0.0, len(jobs))
    queued = [batcher.submit(image, tasks, time.monotonic() + WAIT_S) for image, tasks in jobs]
    batcher.start()  # after queueing: the first worker finds every job waiting
    try:
        return await asyncio.wait_for(asyncio.gather(*(j.future for j in queued)), WAIT_S)
    finally:
        await batcher.stop(WAIT_S)


def test_two_instances_run_two_batches_at_once_each_answer_its_own(runtimes):
    """Six requests, batches of at most four: the first instance takes four, the second the
    other two while the first computes (both calls wait on one barrier, which breaks unless
    both are inside a model call at the same time); every answer is its request's alone."""
    model, (first, second) = runtimes
    hold = threading.Barrier(2)
    instances = [Instance(first, hold), Instance(second, hold)]
    ids = [t.id for t in model.tasks]
    jobs = [(preprocessed(model, 10 + n), tuple(ids[n % 2 :: 2])) for n in range(6)]
    results = asyncio.run(serve(model, instances, jobs, max_batch=4))
    assert not hold.broken
    assert sorted(batch for i in instances for batch in i.batches) == [2, 4]  # one each
    assert sorted(r.batch_images for r in results) == [2, 2, 4, 4, 4, 4]
    for (image, tasks), result in zip(jobs, results, strict=True):
        [alone] = asyncio.run(serve(model, [Instance(first)], [(image, tasks)], max_batch=1))
        assert result.maps.keys() == alone.maps.keys() == {model.tasks[t].name for t in tasks}
        for name, prediction in result.maps.items():  # a batch's GEMMs round apart by ~1e-7
            np.testing.assert_allclose(prediction, alone.maps[name], rtol=0, atol=1e-5)
            np.testing.assert_allclose(
                result.expert_tokens[name], alone.expert_tokens[name], rtol=0, atol=1e-4
            )


def test_one_instance_runs_one_batch_at_a_time(runtimes):
    """The same six requests on one instance: two calls, the second collected after the
    first answered."""
    model, (first, _) = runtimes
    instance = Instance(first)
    jobs = [(preprocessed(model, 10 + n), (0,)) for n in range(6)]
    results = asyncio.run(serve(model, [instance], jobs, max_batch=4))
    assert instance.batches == [4, 2]
    assert [r.batch_images for r in results] == [4, 4, 4, 4, 2, 2]


def test_stop_waits_for_every_instance(runtimes):
    """Stop while both instances are inside a call: both answer before stop returns."""
    model, (first, second) = runtimes
    inside, release = threading.Barrier(3), threading.Event()

    class Held(Instance):
        def run(self, images, stream_image, stream_task):
            inside.wait(WAIT_S)
            release.wait(WAIT_S)
            return super().run(images, stream_image, stream_task)

    async def scenario():
        metrics = ServerMetrics(model, "CPUExecutionProvider")
        instances = [Held(first), Held(second)]
        batcher = Batcher([i.run for i in instances], model, metrics, 1, 0.0, 4)
        batcher.start()
        jobs = [
            batcher.submit(preprocessed(model, n), (0,), time.monotonic() + WAIT_S)
            for n in range(2)
        ]
        await asyncio.to_thread(inside.wait, WAIT_S)  # both calls have started
        stopping = asyncio.create_task(batcher.stop(WAIT_S))
        await asyncio.sleep(0)
        assert not stopping.done()
        release.set()
        await stopping
        return [job.future.result().batch_images for job in jobs]

    assert asyncio.run(scenario()) == [1, 1]


def test_a_batcher_needs_an_instance(runtimes):
    model, _ = runtimes
    with pytest.raises(ValueError, match="at least one model instance"):
        Batcher([], model, ServerMetrics(model, "CPUExecutionProvider"), 1, 0.0, 1)
