"""Executors: run tasks and hand back their results in the order the tasks were given.

A task is a module-level function of picklable arguments (a model's bytes, a shard of data, a
plan, observers, settings) that reads nothing else and returns a picklable result; the caller
merges the results in submission order, so a run is deterministic whatever finishes first.

* `LocalExecutor` runs the tasks here, one after the other. With `shards=1` (the default,
  `--executor local`) callers do not cut their work at all: today's in-process code. With
  `shards=N` they cut it exactly as they would for N workers and run the pieces here: the
  reference a distributed run is tested against, and a test of every merge without Ray.
* `RayExecutor` (`--executor ray`, the optional extra qtool[ray]) runs each task as a Ray task
  of one CPU, on the cluster at `--ray-address` ("auto": the one `ray start --head` started on
  this machine; "host:port" or "ray://host:port") or, without an address, on a Ray started here
  for the run. qtool's own package is shipped to the workers (Ray's runtime_env py_modules), so
  they run exactly the driver's code; its dependencies must be installed there (docs/ray.md).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from qtool.errors import QtoolError

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'qtool[ray]'"
PACKAGE = Path(__file__).resolve().parents[1]  # qtool/, shipped to the workers
RUNTIME_ENV = {"py_modules": [str(PACKAGE)]}  # ray.init's runtime_env: the workers import this qtool
CONNECT_SECONDS = 5.0  # Ray itself retries an address that does not answer for minutes


class Executor:
    """In-process, one piece (the default); see LocalExecutor and RayExecutor."""

    name = "local"
    workers = 1  # pieces that run at once: callers cut their work into about this many

    @property
    def parallel(self) -> bool:
        """Whether callers should cut their work into tasks at all (else their own loop runs)."""
        return self.workers > 1 or self.name != "local"

    def share(self, value: Any) -> Any:
        """A large input many tasks read (a model's bytes), sent once; pass the handle as a task argument."""
        return value

    def map(self, function: Callable, calls: Sequence[tuple], done: Callable[[int], None] | None = None) -> list:
        """function(*args) for every args in `calls`; the results in the order of `calls`.
        `done(n)` is called as tasks finish (n finished so far)."""
        results = []
        for args in calls:
            results.append(function(*args))
            if done is not None:
                done(len(results))
        return results


class LocalExecutor(Executor):
    """Tasks run here in order; `shards` is how many pieces callers cut their work into."""

    def __init__(self, shards: int = 1) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.workers = int(shards)


class RayExecutor(Executor):
    """Tasks run as Ray tasks (one CPU each) on a cluster; connects (or starts one) when made.
    An existing connection of this process (ray.init called by the user or a test) is used as it is."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, runtime_env=RUNTIME_ENV)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise QtoolError(f"--ray-address {address}: cannot connect to a Ray cluster "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                 "start one with 'ray start --head', or give the address it printed; a cluster "
                                 "with token authentication also needs RAY_AUTH_MODE=token and its token, "
                                 "'ray get-auth-token'") from exc
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1)(_one_thread)

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def map(self, function: Callable, calls: Sequence[tuple], done: Callable[[int], None] | None = None) -> list:
        refs = [self._task.remote(function, *args) for args in calls]
        place = {ref: index for index, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    results[place[ref]] = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as exc:
                    for other in pending:
                        self.ray.cancel(other)
                    cause = getattr(exc, "cause", None)
                    raise cause if isinstance(cause, QtoolError) else exc
            if done is not None:
                done(len(results))
        return [results[index] for index in range(len(refs))]


def _one_thread(function: Callable, *args: Any) -> Any:
    """A task in a Ray worker: onnxruntime gets one thread (the task holds one CPU; its default,
    every core, would make the tasks of a node fight over them)."""
    os.environ.setdefault("QTOOL_THREADS", "1")
    return function(*args)


def import_ray():
    """The ray module, or the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise QtoolError("--executor ray: Ray is not installed", INSTALL_HINT) from None
    return ray


def check_reachable(address: str | None) -> None:
    """Fail within seconds on a host:port nobody answers (Ray would retry for minutes)."""
    if address in (None, "", "auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise QtoolError(f"--ray-address {address}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise QtoolError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc})",
                         "start a cluster with 'ray start --head' and give the address it printed") from None


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor a command's --executor / --ray-address ask for."""
    if name == "local":
        if address is not None:
            raise QtoolError(f"--ray-address {address}: only used with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise QtoolError(f"--executor {name}: expected one of {', '.join(EXECUTORS)}")
