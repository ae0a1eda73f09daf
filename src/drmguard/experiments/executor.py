"""Zoo work in parallel: local worker processes, or the tasks of a Ray cluster.

An experiment's work is a :class:`Work`: the models it needs (:class:`ModelSpec`) and the
cached runs on them (:class:`Run`: attack metrics, detections, mitigations). An
:class:`Executor` with more than one worker (or on Ray) computes all of it first, filling the
zoo cache — each model to train is a task, each run a task that waits for its model (and for
the runs of earlier stages on the same model) — and the experiment's own sequential code then
builds its tables from the cache exactly as before, finding everything there.

The cache stays the single source of truth: models and runs are written atomically, a model
is trained under its claim (:meth:`Zoo.claim`, an ``flock`` the kernel drops when its holder
dies), so two workers — or two machines sharing the cache directory — never train the same
model twice, and a task killed half-way is simply redone by the next invocation.

Every task sets its own seeds exactly as the sequential path does (the record functions and
the training code seed themselves), so a result does not depend on the worker that made it.
Each worker uses ``cores // workers`` torch threads (at least one).
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DrmguardError, first_line
from ..utils import progress_bar
from .zoo import ModelSpec, Zoo, _hash

BACKENDS = ("local", "ray")


@dataclass
class Run:
    """One cached run on the model ``spec``: ``call`` is a module-level function (or a
    ``functools.partial`` of one) taking any of ``zoo``, ``spec``, ``model``, ``attack``,
    ``meta`` by name, like :func:`~.identification.detect_record`. ``kind``/``name``/
    ``config`` name the cache entry it fills (see :meth:`Zoo.cached_run`): a cached one is
    skipped, and recorded times of alike runs give the estimate. A run of a later ``stage``
    starts after the earlier stages' runs on the same model (e.g. a DRMGuard mitigation after
    the scan it reuses). ``gpu``: asks a Ray cluster for a GPU where it has them."""

    spec: ModelSpec
    call: Callable
    kind: str
    name: str
    config: dict = field(default_factory=dict)
    stage: int = 0
    gpu: bool = True

    def ident(self) -> tuple:
        return (self.spec.key(), self.kind, self.name, _hash(self.config))


@dataclass
class Work:
    """The models an experiment needs and the runs on them; ``+`` joins two."""

    specs: list[ModelSpec] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def __add__(self, other: Work) -> Work:
        return Work(self.specs + other.specs, self.runs + other.runs)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, total_cores: int | None = None) -> int:
    return max(1, (total_cores or cores()) // workers)


# --- what a worker does ---------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _task(root: str, rescan: bool, threads: int, spec: ModelSpec, call: Callable | None) -> float:
    """Train (or load) ``spec``'s model and, with ``call``, compute that run into the cache;
    returns the seconds it took. Runs in a worker process."""
    _set_threads(threads)
    t0 = time.perf_counter()
    zoo = Zoo(root, progress=False, rescan=rescan)
    model, attack, meta = zoo.model(spec)
    if call is not None:
        given = {"zoo": zoo, "spec": spec, "model": model, "attack": attack, "meta": meta}
        params = inspect.signature(call).parameters
        bound = getattr(call, "keywords", {})
        call(**{k: v for k, v in given.items() if k in params and k not in bound})
    return time.perf_counter() - t0


# --- backends: submit a task, wait for some -------------------------------------------------
class _Local:
    """A pool of spawned worker processes (not forked: torch keeps threads)."""

    def __init__(self, workers: int, threads: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.threads = threads
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, args: tuple, gpu: bool):
        return self.pool.submit(_task, *args)

    def wait(self, pending: set) -> set:
        from concurrent.futures import FIRST_COMPLETED, wait

        return wait(pending, return_when=FIRST_COMPLETED).done

    @staticmethod
    def result(handle) -> float:
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Ray:
    """Ray tasks, each asking for ``threads`` CPUs (and a GPU for GPU work where the cluster
    has them). Without ``address``: a Ray instance on this machine."""

    def __init__(self, workers: int, address: str | None):
        ray = _import_ray()
        try:
            if address:  # a running cluster: its own resources, its workers' logs shown
                ray.init(address=address, logging_level="ERROR")
            else:
                ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DrmguardError(f"cannot connect to the Ray cluster at '{address or 'local'}': "
                                f"{first_line(e)}") from e
        res = ray.cluster_resources()
        self.ray = ray
        self.threads = threads_per_worker(workers, int(res.get("CPU", cores())))
        self.gpus = res.get("GPU", 0) > 0
        self.remote = ray.remote(_task)

    def submit(self, args: tuple, gpu: bool):
        opts = {"num_cpus": self.threads, "num_gpus": 1 if gpu and self.gpus else 0}
        return self.remote.options(**opts).remote(*args)

    def wait(self, pending: set) -> set:
        done, _ = self.ray.wait(list(pending), num_returns=1)
        return set(done)

    def result(self, handle) -> float:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:  # the task's own error, as local workers
            if isinstance(getattr(e, "cause", None), Exception):
                raise e.cause from None
            raise

    def close(self) -> None:
        self.ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DrmguardError("`executor` ray needs Ray: pip install 'drmguard[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """A host:port Ray address must accept connections (fails in seconds, not minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray itself says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise DrmguardError(f"cannot reach the Ray cluster at '{address}' "
                            f"({e.strerror or e})") from None


# --- the executor ---------------------------------------------------------------------------
class Executor:
    """Computes a :class:`Work` into a zoo's cache with ``workers`` local processes
    (``backend="local"``) or as Ray tasks (``backend="ray"``, ``address`` of a running cluster,
    none for a Ray instance on this machine). One local worker: nothing to do in advance, the
    experiment computes everything itself, one item after another (the sequential path)."""

    def __init__(self, workers: int = 1, backend: str = "local", address: str | None = None,
                 progress: bool = True):
        if workers < 1:
            raise DrmguardError(f"`workers` must be at least 1, got {workers}")
        if backend not in BACKENDS:
            raise DrmguardError(f"unknown executor '{backend}' (choose {', '.join(BACKENDS)})")
        if address and backend != "ray":
            raise DrmguardError("`address` is for `executor` ray")
        if backend == "ray":
            _import_ray()
            if address:
                _check_reachable(address)
        self.workers, self.backend, self.address = workers, backend, address
        self.progress = progress

    @property
    def sequential(self) -> bool:
        return self.backend == "local" and self.workers == 1

    def _start(self):
        if self.backend == "ray":
            return _Ray(self.workers, self.address)
        return _Local(self.workers, threads_per_worker(self.workers))

    def run(self, zoo: Zoo, work: Work) -> dict:
        """Train the missing models and compute the missing runs of ``work`` into ``zoo``'s
        cache. Returns what was computed: {"trained": [model labels], "runs": [(model label,
        kind, name)], "seconds": wall time}."""
        done = {"trained": [], "runs": [], "seconds": 0.0}
        if self.sequential:
            return done
        t0 = time.perf_counter()
        specs = {s.key(): s for s in work.specs + [r.spec for r in work.runs]}
        train = [k for k, s in specs.items() if not zoo.has_model(s)]
        runs: dict[tuple, Run] = {}
        for r in work.runs:
            if not (zoo.has_model(r.spec) and zoo.has_run(r.spec, r.kind, r.name, r.config)):
                runs.setdefault(r.ident(), r)
        if not train and not runs:
            return done
        known = zoo.cached_specs()
        estimate = {k: zoo.estimate(specs[k], known) for k in train}
        estimate.update({i: zoo.estimate(r.spec, known, r.kind, r.name, r.config)
                         for i, r in runs.items()})
        waiting: dict[str, list[Run]] = {}  # model key -> its runs not yet submitted
        for i, r in runs.items():
            waiting.setdefault(i[0], []).append(r)
        for rs in waiting.values():
            rs.sort(key=lambda r: r.stage)
        running_stage: dict[str, list] = {}  # model key -> handles of its runs of one stage
        backend = self._start()
        root = str(Path(zoo.root).resolve())
        pending: dict = {}  # handle -> ("train", key) or ("run", ident)

        def submit_runs(key: str) -> None:
            rs = waiting.get(key, [])
            if not rs or running_stage.get(key):
                return
            stage = rs[0].stage
            batch = [r for r in rs if r.stage == stage]
            waiting[key] = rs[len(batch):]
            running_stage[key] = []
            for r in batch:
                h = backend.submit((root, zoo.rescan, backend.threads, r.spec, r.call), r.gpu)
                pending[h] = ("run", r.ident())
                running_stage[key].append(h)

        bar = progress_bar(total=len(train) + len(runs), desc="zoo tasks",
                           enabled=self.progress, unit="task")
        left = dict(estimate)
        try:
            for key in train:
                pending[backend.submit((root, zoo.rescan, backend.threads, specs[key], None),
                                       True)] = ("train", key)
            for key in waiting:
                if key not in train:
                    submit_runs(key)
            self._eta(bar, left)
            while pending:
                for h in backend.wait(set(pending)):
                    what, ident = pending.pop(h)
                    backend.result(h)  # raises the task's error here
                    left.pop(ident, None)
                    key = ident if what == "train" else ident[0]
                    if what == "train":
                        done["trained"].append(specs[key].label())
                    else:
                        done["runs"].append((specs[key].label(), ident[1], ident[2]))
                        running_stage[key].remove(h)
                    submit_runs(key)
                    bar.update(1)
                    self._eta(bar, left)
        finally:
            bar.close()
            backend.close()
        done["seconds"] = time.perf_counter() - t0
        return done

    def _eta(self, bar, left: dict) -> None:
        """The bar's postfix: the recorded times of what is left, spread over the workers."""
        timed = [s for s in left.values() if s is not None]
        n = len(left) - len(timed)
        untimed = f"{n} task(s) never timed" if n else ""
        text = f"≈ {sum(timed) / self.workers / 60:.1f} min left by recorded times" if timed else ""
        bar.set_postfix_str(" + ".join(t for t in (text, untimed) if t))
