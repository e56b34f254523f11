"""The model versions being served and how they change (Triton's model control): which one a
request gets, loading and unloading, the swap from one version to the next, and polling the
repository (server/repository.py says what is on disk; server/state.py builds a version).

A swap never drops a request. A new version is opened and warmed beside the old ones and takes
requests only once it is ready; versions the policy no longer serves are taken out of routing
then, and unloaded once the requests that chose them have finished (their sessions closed,
their series removed, the freed memory trimmed). A load that fails (a broken graph, metadata
that does not validate, weights past the model memory budget) changes nothing that serves,
and while any version the policy wants fails, the versions already serving stay; the reason
is logged and shown by the repository index.

Modes (``model_control_mode``): ``none`` loads what is there at start; ``explicit`` adds the
repository API's load and unload; ``poll`` looks at the repository every ``repository_poll_s``
and applies what changed (new or removed models and versions, files rewritten, a failed
version retried once its files change).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

from server.errors import InvalidInput, NotFound, Unavailable
from server.heap import trim_heap
from server.modeldir import load_model_dir
from server.repository import (
    Fingerprint,
    Repository,
    VersionPolicy,
    default_name,
    fingerprint,
    repository_for,
    served_names,
)
from server.settings import Settings
from server.state import (
    ServerState,
    Shared,
    load_shared,
    load_state,
    model_bytes,
    model_memory_bytes,
    warm_up,
)

log = logging.getLogger("server.models")
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


class LoadFailed(InvalidInput):
    """A load asked for through the repository API did not succeed (400, as Triton)."""


@dataclass
class VersionStatus:
    """A version that is not serving: loading, unloading, or unavailable and why."""

    state: str
    reason: str = ""
    files: Fingerprint = ()  # what failed to load: retried by polling once it changes


class ModelControl:
    """Every model version of one server: routing, loads, unloads, polling."""

    def __init__(self, settings: Settings, shared: Shared | None = None) -> None:
        self.settings = settings
        self.shared = shared or load_shared(settings)
        self.metrics = self.shared.metrics
        self.repository: Repository = repository_for(settings)
        self.policy = VersionPolicy.parse(settings.model_version_policy)
        self.serving: dict[str, dict[str, ServerState]] = {}  # name -> version -> ready state
        self.status: dict[tuple[str, str], VersionStatus] = {}  # versions not serving
        self.files: dict[tuple[str, str], Fingerprint] = {}  # of each serving version
        self.ready = False  # the start-up loads are done
        self.generation = 0  # bumped whenever what is served changes
        self._weights: dict[object, int] = {}  # id(state) or a load's token -> weights' bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None

    # -- start and stop ---------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load the repository's models (``models``: only those); then, in poll mode, watch it.
        Returns what failed, each as a sentence."""
        found = await asyncio.to_thread(self.repository.scan)
        failures = []
        for name in served_names(self.settings, found):
            failures += await self.sync(name, found[name], retry_failed=True)
        self.ready = True
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll(), name="ase-repository-poll")
        return failures

    async def stop(self, timeout_s: float) -> None:
        """Drain every version (requests in flight finish), then close them all."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
        states = [state for versions in self.serving.values() for state in versions.values()]
        self.serving.clear()
        await asyncio.gather(*(state.batcher.stop(timeout_s) for state in states))
        for state in states:
            state.close()
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=timeout_s)
        await asyncio.to_thread(self.shared.render_pool.shutdown, True)

    # -- routing ----------------------------------------------------------------------------

    def default_name(self) -> str | None:
        return default_name(self.settings, sorted(self.serving))

    def resolve(self, name: str | None = None, version: str | None = None) -> ServerState:
        """The ready version a request gets: ``version`` of ``name``, or its highest; ``name``
        omitted: the default model. 404 naming what is served; 503 while it loads."""
        name = name or self.default_name() or ""
        versions = self.serving.get(name, {})
        if version in versions:
            return versions[version]
        if versions and not version:
            return versions[max(versions, key=int)]
        if self._loading(name, version):
            raise Unavailable("not_ready", f"model {name!r} is loading; retry soon", 1)
        if not versions:
            raise NotFound("unknown_model", f"unknown model {name!r}; {self.served_text()}")
        raise NotFound(
            "unknown_version",
            f"model {name!r} has no version {version!r} ready; it serves version(s) "
            f"{', '.join(self.versions(name))}",
        )

    def _loading(self, name: str, version: str | None) -> bool:
        return any(
            model == name and (not version or v == version) and status.state == LOADING
            for (model, v), status in self.status.items()
        )

    def served_text(self) -> str:
        """The models served, for messages: ``this server serves 'a' (1, 2), 'b' (1)``."""
        if not self.serving:
            return "this server serves no model now (see POST /v2/repository/index)"
        listed = (f"{name!r} ({', '.join(self.versions(name))})" for name in sorted(self.serving))
        return f"this server serves {', '.join(listed)}"

    def versions(self, name: str) -> list[str]:
        """The ready versions of ``name``, in increasing order."""
        return sorted(self.serving.get(name, {}), key=int)

    def all_served(self) -> list[ServerState]:
        return [
            self.serving[name][version]
            for name in sorted(self.serving)
            for version in self.versions(name)
        ]

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (``version``) can take requests; 404 unless it is known (served,
        loading, unloaded, or failed to load)."""
        try:
            self.resolve(name, version)
            return True
        except Unavailable:
            return False
        except NotFound:
            if version and (name, version) in self.status:
                return False
            if not version and any(key[0] == name for key in self.status):
                return False
            raise

    def flush_router(self) -> None:
        for state in self.all_served():
            state.batcher.flush_router()

    # -- the repository API (explicit mode) -------------------------------------------------

    async def load(self, name: str) -> None:
        """Load ``name`` from the repository, or reload the versions whose files changed; the
        policy's other versions are unloaded once these are ready. 400 if one fails."""
        self._check_explicit()
        found = await asyncio.to_thread(self.repository.scan)
        if name not in found:
            raise NotFound(
                "unknown_model",
                f"no model {name!r} in the repository {self.repository.describe()}; it holds "
                f"{', '.join(map(repr, found)) or 'none'}",
            )
        failures = await self.sync(name, found[name], retry_failed=True)
        if failures:
            raise LoadFailed("model_load_failed", f"load of {name!r} failed: {'; '.join(failures)}")

    async def unload(self, name: str) -> None:
        """Take every version of ``name`` out of routing; returns once they are unloaded (the
        requests that chose them finished first)."""
        self._check_explicit()
        if name not in self.serving and not any(key[0] == name for key in self.status):
            on_disk = await asyncio.to_thread(self.repository.scan)
            if name not in on_disk:
                raise NotFound("unknown_model", f"unknown model {name!r}; {self.served_text()}")
        async with self._lock(name):
            retiring = [self._retire(name, version) for version in self.versions(name)]
        await asyncio.gather(*retiring)

    def _check_explicit(self) -> None:
        mode = self.settings.model_control_mode
        if mode != "explicit":
            what = "it watches the repository" if mode == "poll" else "it serves what it found"
            raise Unavailable(
                "model_control_disabled",
                f"explicit model load / unload is not allowed: this server runs with "
                f"--model-control-mode {mode} ({what}); start it with --model-control-mode "
                "explicit",
            )

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model on disk or served, each version with its
        state (READY, LOADING, UNLOADING, UNAVAILABLE) and why; a model never loaded has a
        row with its name only."""
        found = await asyncio.to_thread(self.repository.scan)
        rows = []
        for name in sorted(set(found) | set(self.serving) | {key[0] for key in self.status}):
            versions = {v: (READY, "") for v in self.versions(name)}
            for (model, version), status in self.status.items():
                if model != name:
                    continue
                if version not in versions:
                    versions[version] = (status.state, status.reason)
                elif status.state == UNAVAILABLE:  # a reload failed: the old files still serve
                    versions[version] = (READY, f"reloading it failed: {status.reason}")
            for version in sorted(versions, key=int):
                state, reason = versions[version]
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
            if not versions:
                rows.append({"name": name, "version": "", "state": "", "reason": ""})
        return [row for row in rows if row["state"] == READY or not ready_only]

    # -- following the disk -----------------------------------------------------------------

    async def sync(self, name: str, on_disk: dict[str, Path], retry_failed: bool) -> list[str]:
        """Serve what the policy picks of ``name``'s versions on disk: load the new ones and
        those whose files changed, then retire the others, but only once every picked
        version is ready. Returns what failed."""
        async with self._lock(name):
            for key in [key for key in self.status if key[0] == name]:
                if key[1] not in on_disk and self.status[key].files:
                    del self.status[key]  # a version that failed to load and left the disk
            wanted = self.policy.select(list(on_disk))
            files = await asyncio.to_thread(lambda: {v: fingerprint(on_disk[v]) for v in wanted})
            failures = []
            for version in wanted:
                key = (name, version)
                if key in self.files and self.files[key] == files[version]:
                    continue  # serving, unchanged
                failed = self.status.get(key)
                if not retry_failed and failed and failed.files == files[version]:
                    failures.append(f"version {version}: {failed.reason}")
                    continue  # polling: the same files would fail the same way
                error = await self._load(name, version, on_disk[version], files[version])
                if error:
                    failures.append(f"version {version}: {error}")
            if not failures:
                for version in self.versions(name):
                    if version not in wanted:
                        self._retire(name, version)
            return failures

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:  # a bad look at the disk must not stop the next one
                log.exception("polling the model repository failed")

    async def poll_once(self) -> None:
        """One look at the repository: every model found or served brought in line."""
        found = await asyncio.to_thread(self.repository.scan)
        names = served_names(self.settings, found)
        for name in sorted(set(names) | set(self.serving)):
            await self.sync(name, found[name] if name in names else {}, retry_failed=False)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- one version in, one version out ----------------------------------------------------

    async def _load(self, name: str, version: str, path: Path, files: Fingerprint) -> str | None:
        """Open and warm one version beside what serves; once ready, it takes requests (a
        reload of the same version replaces the old one, which drains). The error, if any."""
        key = (name, version)
        self.status[key] = VersionStatus(LOADING)
        try:
            state = await self._open(name, version, path)
        except Exception as error:
            reason = str(error) or type(error).__name__
            log.error("model %s version %s failed to load from %s: %s", name, version, path, reason)
            self.status[key] = VersionStatus(UNAVAILABLE, reason, files)
            return reason
        state.ready = True
        old = self.serving.setdefault(name, {}).get(version)
        self.serving[name][version] = state
        self.files[key] = files
        self.status.pop(key, None)
        self.generation += 1
        if old is not None:
            self._retire_state(old, key)
        log.info("model %s version %s ready (%s)", name, version, state.runtime.provider)
        return None

    async def _open(self, name: str, version: str, path: Path) -> ServerState:
        model = await asyncio.to_thread(load_model_dir, path, True, name, version)
        token = self._reserve_weights(name, version, model_bytes(model, self.settings))
        try:
            state = await asyncio.to_thread(load_state, self.settings, model, self.shared)
        except BaseException:
            self._weights.pop(token)
            raise
        self._weights[id(state)] = self._weights.pop(token)
        state.batcher.start()
        try:
            seconds = await asyncio.to_thread(warm_up, state)
        except BaseException:
            await state.batcher.stop(0)
            state.close()
            self._weights.pop(id(state))
            raise
        log.info("model %s version %s warmed up in %.3f s", name, version, seconds)
        return state

    def _reserve_weights(self, name: str, version: str, needed: int) -> object:
        """Hold ``needed`` bytes of the model memory budget for a version being opened (the
        token returned: moved to its state once built), or raise why it cannot fit beside the
        versions loaded (MemoryError)."""
        budget, held = model_memory_bytes(self.settings), sum(self._weights.values())
        if held + needed > budget:
            raise MemoryError(
                f"model {name} version {version} needs about {needed >> 20} MiB for its "
                f"weights; {held >> 20} MiB of the model memory budget of {budget >> 20} MiB "
                "are held by the versions loaded (a swap holds the old and the new at once): "
                "unload one first, or raise --model-memory-mb"
            )
        token = object()
        self._weights[token] = needed
        return token

    def _retire(self, name: str, version: str) -> asyncio.Task:
        """Out of routing now; unloaded once its requests finished."""
        state = self.serving[name].pop(version)
        if not self.serving[name]:
            del self.serving[name]
        self.files.pop((name, version), None)
        self.generation += 1
        return self._retire_state(state, (name, version))

    def _retire_state(self, state: ServerState, key: tuple[str, str]) -> asyncio.Task:
        if key not in self.files:  # not replaced by a reload: the index shows it going
            self.status[key] = VersionStatus(UNLOADING)
        task = asyncio.create_task(self._unload(state, key))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _unload(self, state: ServerState, key: tuple[str, str]) -> None:
        limit = self.settings.timeout_s + self.settings.shutdown_timeout_s
        try:
            async with asyncio.timeout(limit):  # every request has a deadline: this is a bound
                await state.drained()
        except TimeoutError:
            log.warning("model %s version %s: %d requests still hold it", *key, state.in_flight)
        await state.batcher.stop(self.settings.shutdown_timeout_s)
        state.close()
        self._weights.pop(id(state), None)
        if self.status.get(key, VersionStatus(READY)).state == UNLOADING:
            self.status[key] = VersionStatus(UNAVAILABLE, "unloaded")
        del state
        gc.collect()  # cycles (futures, tracebacks) may hold its arrays
        if self.settings.return_freed_memory != "never":
            await asyncio.to_thread(trim_heap)
        log.info("model %s version %s unloaded", *key)
