"""Model zoos cached by content, and cached defence runs on them.

A :class:`ModelSpec` names one model completely (task, profile, architecture, attack and its
options, seed, data seed). Its hash is the cache key: a rerun reuses every trained model and
every finished defence run, and a killed run resumes where it stopped (a model directory is
moved into place only once it is complete).

Cache layout::

    CACHE/models/<key>/model.safetensors, model.json, trigger.safetensors, spec.json
    CACHE/runs/<key>/<kind>-<name>-<config hash>.json
    CACHE/locks/<key>.lock   (held while a process trains that model)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..attacks.base import TARGET_MIN_SD, draw_target  # noqa: F401 (draw_target: zoo API)
from ..data.base import Splits
from ..errors import DrmguardError
from ..models.io import load_model, save_model
from ..profiles import get_profile
from ..training import train_regressor
from ..utils import code_digest, default_cache_dir
from .data import experiment_task, synthetic_splits

CACHE_VERSION = 2  # 2: the key holds only the spec's task's part of the profile
DEFAULT_CACHE = default_cache_dir()  # at import; Zoo(None) reads the environment when built


def _hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    task: str
    profile: str
    attack: str | None = None  # None: a benign model
    seed: int = 0
    arch: str | None = None  # None: the profile's architecture
    attack_options: tuple = field(default_factory=tuple)  # sorted (key, value) pairs
    data_seed: int = 0

    @property
    def backdoored(self) -> bool:
        return self.attack is not None

    @property
    def arch_name(self) -> str:
        return self.arch or get_profile(self.profile).arch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attack_options"] = dict(self.attack_options)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """The inverse of :meth:`to_dict` (a cached model's ``spec.json``)."""
        return cls(**{**d, "attack_options": tuple(sorted((d.get("attack_options") or {}
                                                           ).items()))})

    def key(self) -> str:
        """Content hash: the spec plus everything it resolves to (the profile's data and
        schedule, the attack's defaults and schedule, the synthetic generator's version), so a
        change of any default retrains instead of reusing a stale model."""
        from ..data.synthetic import SYNTHETIC_VERSION

        resolved = {"profile": get_profile(self.profile).for_task(self.task),
                    "synthetic": SYNTHETIC_VERSION}
        if self.attack is not None:  # the rule that draws the target (draw_target)
            resolved["target_min_sd"] = TARGET_MIN_SD
        if self.attack is not None:
            from ..attacks import attack_class, attack_train_config

            cls = attack_class(self.attack)
            resolved["attack_defaults"] = cls.resolved_defaults(self.profile, self.task)
            resolved["attack_train"] = attack_train_config(self.attack, self.profile, self.task,
                                                           self.seed).to_dict()
        return _hash({"v": CACHE_VERSION, **self.to_dict(), "arch": self.arch_name,
                      "resolved": resolved})

    def label(self) -> str:
        kind = self.attack or "benign"
        arch = f"/{self.arch}" if self.arch else ""
        return f"{self.task}/{kind}{arch}/seed{self.seed}"


#: how far (standard deviations) an attack target lies from the label mean, at least
class Zoo:
    """Trains, caches and loads the models of experiments, and caches defence runs."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 rescan: bool = False):
        """``cache_dir``: None for :func:`~drmguard.utils.default_cache_dir`.
        ``rescan``: a cached run counts only if the current code made it (its ``code``
        stamp equals :func:`~drmguard.utils.code_digest`); others are computed again and
        replaced. Trained models are always reused."""
        self.root = Path(cache_dir if cache_dir is not None else default_cache_dir())
        self.progress = progress
        self.rescan = rescan

    # --- data ------------------------------------------------------------------------------
    def splits(self, spec: ModelSpec) -> Splits:
        return synthetic_splits(spec.task, spec.profile, spec.data_seed)

    # --- models ----------------------------------------------------------------------------
    def model_dir(self, spec: ModelSpec) -> Path:
        return self.root / "models" / spec.key()

    def has_model(self, spec: ModelSpec) -> bool:
        return (self.model_dir(spec) / "spec.json").exists()

    def model(self, spec: ModelSpec):
        """(model, attack or None, meta) — trained on first use, loaded from the cache after."""
        from ..attacks import load_attack

        d = self.model_dir(spec)
        if not self.has_model(spec):
            with self.claim(spec):  # another process may be training it right now
                if not self.has_model(spec):
                    self._train(spec, d)
        model, meta = load_model(d)
        return model, load_attack(d), meta

    @contextlib.contextmanager
    def claim(self, spec: ModelSpec):
        """Hold ``CACHE/locks/<key>.lock`` (an exclusive ``flock``) for the duration: two
        processes sharing the cache never train the same model at once. The kernel releases
        the lock when its holder dies, so a killed training leaves no stale claim."""
        path = self.root / "locks" / f"{spec.key()}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _train(self, spec: ModelSpec, final_dir: Path) -> None:
        prof = get_profile(spec.profile)
        task = experiment_task(spec.task)
        splits = self.splits(spec)
        arch_kwargs = prof.arch_kwargs if spec.arch_name == prof.arch else {}
        attack = None
        if spec.attack is None:
            model, meta = train_regressor(splits.train, task, spec.arch_name,
                                          prof.train_config(spec.task, spec.seed), arch_kwargs,
                                          progress=self.progress, desc=spec.label())
        else:
            from ..attacks import attack_class, attack_train_config, make_attack

            opts = dict(spec.attack_options)
            n_targets = int(opts.pop("n_targets", attack_class(spec.attack).num_targets))
            targets = draw_target(splits.train.targets, spec.seed, n_targets)
            if n_targets > 1:
                opts["targets"] = targets
            attack = make_attack(spec.attack, targets[0], task=spec.task,
                                 image_size=splits.train.image_size,
                                 channels=splits.train.channels, seed=spec.seed,
                                 profile=spec.profile, **opts)
            cfg = attack_train_config(spec.attack, spec.profile, spec.task, spec.seed)
            model, meta = attack.train_backdoored(splits.train, task, spec.arch_name, cfg,
                                                  arch_kwargs, progress=self.progress)
        meta["profile"] = spec.profile
        meta["zoo_spec"] = spec.to_dict()
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final_dir.parent))
        try:
            save_model(model, tmp / "m", meta)
            if attack is not None:
                attack.save(tmp / "m")
            (tmp / "m" / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
            if final_dir.exists():  # an incomplete earlier attempt
                shutil.rmtree(final_dir)
            os.replace(tmp / "m", final_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- cached runs -----------------------------------------------------------------------
    def run_path(self, spec: ModelSpec, kind: str, name: str, config: dict) -> Path:
        return self._run_file(spec.key(), kind, name, config)

    def _run_file(self, model_key: str, kind: str, name: str, config: dict) -> Path:
        return self.root / "runs" / model_key / f"{kind}-{name}-{_hash(config)}.json"

    def artifact_path(self, spec: ModelSpec, kind: str, name: str, config: dict,
                      suffix: str) -> Path:
        """A file kept beside a run's JSON record (e.g. ``.trigger.safetensors``)."""
        return self.run_path(spec, kind, name, config).with_suffix(suffix)

    def has_run(self, spec: ModelSpec, kind: str, name: str, config: dict) -> bool:
        """Whether the cache holds this run (under ``rescan``: made by the current code)."""
        path = self.run_path(spec, kind, name, config)
        return self._usable(path) is not None if self.rescan else path.exists()

    def _usable(self, path: Path) -> dict | None:
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        return rec if not self.rescan or rec.get("code") == code_digest() else None

    def cached_specs(self) -> dict[str, dict]:
        """{model key: its spec dict} of every model in the cache (read once per call)."""
        out = {}
        for sp in self.root.glob("models/*/spec.json"):
            try:
                out[sp.parent.name] = json.loads(sp.read_text())
            except (OSError, ValueError):
                continue
        return out

    @staticmethod
    def _alike(spec: ModelSpec, cached: dict[str, dict], ignored: set[str]) -> list[str]:
        """Keys of the ``cached`` models whose spec equals ``spec``'s but for ``ignored``."""
        same = {k: v for k, v in spec.to_dict().items() if k not in ignored}
        return [key for key, other in cached.items()
                if {k: other.get(k) for k in same} == same]

    def recorded_seconds(self, spec: ModelSpec, cached: dict[str, dict], kind: str | None = None,
                         name: str | None = None, config: dict | None = None,
                         any_attack: bool = False) -> list[float]:
        """Wall times recorded for work like ``spec``'s among the ``cached`` models (from
        :meth:`cached_specs`) with the same task, profile, attack, options and architecture (any
        seed): their training times, or with ``kind``/``name``/``config`` the times of that run.
        ``any_attack``: models of any attack (or none) count as alike."""
        ignored = {"seed", "attack", "attack_options"} if any_attack else {"seed"}
        out = []
        for key in self._alike(spec, cached, ignored):
            try:
                if kind is None:
                    t = json.loads((self.root / "models" / key / "model.json").read_text()
                                   )["history"]["seconds"]
                else:
                    run = self._run_file(key, kind, name, config)
                    if not run.exists():
                        continue
                    r = json.loads(run.read_text())
                    t = r.get("wall_seconds", r.get("seconds"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(t, (int, float)):
                out.append(float(t))
        return out

    def plan(self, specs: list[ModelSpec], kind: str,
             runs: list[tuple[ModelSpec, str, dict]]) -> dict:
        """What an experiment over ``specs`` with ``runs`` = [(spec, name, config)] of one
        ``kind`` ("detect", "mitigate") would do with this cache: the models to train and the
        runs to compute, each with the median wall time recorded for alike work (None when
        nothing alike is cached), and what is cached already. A run's time barely depends on
        the attack the model carries, so a run with no record on models of its own attack is
        timed by the same run on the task's other models; training times are not (attacks
        train differently). ``implant``: per kind of backdoored model, the seeds asked for and
        how many alike cached models implanted (:meth:`implant_record`)."""
        known = self.cached_specs()
        train = [{"model": s.label(), "seconds": self.estimate(s, known)} for s in specs
                 if not self.has_model(s)]
        todo = [{"model": s.label(), "defense": name,
                 "seconds": self.estimate(s, known, kind, name, cfg)}
                for s, name, cfg in runs
                if not (self.has_model(s) and self.has_run(s, kind, name, cfg))]
        timed = [w["seconds"] for w in train + todo if w["seconds"] is not None]
        groups: dict[str, list[ModelSpec]] = {}  # "task/attack[/arch]" -> its specs
        for s in specs:
            if s.backdoored:
                groups.setdefault(s.label().rsplit("/", 1)[0], []).append(s)
        implant = [{"models": name, "seeds": len(g),
                    **dict(zip(("implanted", "measured"), self.implant_record(g[0], known)))}
                   for name, g in groups.items()]
        return {"kind": kind, "cached": {"models": len(specs) - len(train),
                                         "runs": len(runs) - len(todo)},
                "train": train, kind: todo, "estimated_seconds": sum(timed),
                "unestimated": len(train) + len(todo) - len(timed), "implant": implant}

    def implant_record(self, spec: ModelSpec, cached: dict[str, dict]) -> tuple[int, int]:
        """(implanted, measured) among the ``cached`` models like ``spec`` (same task, profile,
        attack, options and architecture; any seed) that the current defaults would train the
        same way (their key is still their key) and whose attack metrics are recorded: what
        share of seeds an experiment can expect to implant (``--plan``)."""
        from ..metrics import implanted

        hits = measured = 0
        for key in self._alike(spec, cached, {"seed"}):
            try:
                if ModelSpec.from_dict(cached[key]).key() != key:
                    continue  # trained under other defaults
                att = json.loads(self._run_file(key, "attack", "metrics", {}).read_text())
            except (OSError, ValueError, TypeError):
                continue
            if "CTE" in att:
                measured += 1
                hits += bool(implanted(att))
        return hits, measured

    def estimate(self, spec: ModelSpec, cached: dict[str, dict], kind: str | None = None,
                 name: str | None = None, config: dict | None = None) -> float | None:
        """Median recorded wall time of training ``spec`` (or, with ``kind``/``name``/
        ``config``, of that run on it) among the ``cached`` models (see :meth:`plan`); None
        when nothing alike is cached."""
        import statistics

        run = (kind, name, config) if kind is not None else ()
        xs = self.recorded_seconds(spec, cached, *run)
        if not xs and run:
            xs = self.recorded_seconds(spec, cached, *run, any_attack=True)
        return statistics.median(xs) if xs else None

    def cached_run(self, spec: ModelSpec, kind: str, name: str, config: dict, compute):
        """JSON result of ``compute()`` for (model, kind, name, config), computed once and
        stamped with the code that computed it (``code``)."""
        path = self.run_path(spec, kind, name, config)
        cached = self._usable(path)
        if cached is not None:
            return cached
        result = {**compute(), "code": code_digest()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:  # a file of its own per writer: workers share the cache
            f.write(json.dumps(result, indent=2, default=_jsonable))
        os.replace(tmp, path)
        return json.loads(path.read_text())


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return str(o)
