"""``scan``: reverse-engineer a trigger on D_b, identify, estimate the target vector.

:class:`ScanResult` keeps everything a report needs (verdict, R, collapse, target estimate and
its trajectory, sample images, the MTR map, timings, the configuration) plus the reversed
trigger function itself (``result.reverse(x)``), which mitigation fine-tunes against.

``ScanResult.to_dict()`` schema (``schema = "drmguard.scan/1"``; JSON-safe, no arrays)::

    defense, schema, task, target_names, seed, n_benign,
    backdoored (bool), status ("backdoored" | "benign" | "no cheap trigger found"),
    R, tau, collapse_ratio, collapse_threshold, score (higher = more suspicious; see identify),
    target_estimate [K], reversed_output_std [K], benign_output_std [K],
    target_class                              (classifiers only: argmax of target_estimate,
                                              the mean softmax vector on reversed inputs)
    rav, rnv, r_floor, mean_abs_change_per_pixel,
    objective {loss, output, l1, rf}          (final terms over all of D_b)
    trajectory [{step, estimate [K]}]         (target estimate during the chosen search)
    restarts [{seed, warp_grid, pattern_only, R, collapse_ratio, objective, pretrain_error,
               r_floor, chosen_step}]         (every search: config.restarts plain ones, then
                                              the warp search if config.warp_search, then the
                                              pattern search if config.pattern_search)
    chosen_restart, residual_scale, timings {seconds...}, config {DRMGuardConfig}
    checkpoints [{step, R, collapse_ratio, objective, output, l1, rf, estimate [K]}]
                                              (the chosen search's states on the held-out part
                                              of D_b; empty when config.select = "final")
    chosen_step                               (the step whose generator is the trigger; None:
                                              the final one)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...data.base import ArrayDataset
from ...errors import DrmguardError, first_line
from ...tasks import Task
from ...utils import device_layout, progress_bar, resolve_device
from .config import DRMGuardConfig, default_config
from .identify import detection_score, evaluate_trigger, verdict
from .outputs import view_for
from .reverse import (BenignImages, ReversedTrigger, choose_state, frozen, precompute_benign,
                      run_search)

from ...schema import SCAN_SCHEMA as SCHEMA
from ...schema import TRIGGER_FORMAT  # ScanResult.save: reversed trigger + scan record


@dataclass
class ScanResult:
    backdoored: bool
    status: str
    r_score: float
    tau: float
    collapse_ratio: float
    collapse_threshold: float
    score: float
    target_estimate: list[float]
    trajectory: list[tuple[int, list[float]]]
    benign_images: np.ndarray  # n×H×W×C uint8
    reversed_images: np.ndarray  # n×H×W×C uint8
    residual_images: np.ndarray  # n×H×W×C uint8: |x̃ − x| / residual_scale
    residual_scale: float
    attention: np.ndarray | None  # H×W float32 in [0,1): the final MTR map
    timings: dict
    config: dict
    task: str = "generic"
    target_names: list[str] = field(default_factory=list)
    seed: int = 0
    n_benign: int = 0
    metrics: dict = field(default_factory=dict)  # rav, rnv, stds, objective, r_floor ...
    restarts: list[dict] = field(default_factory=list)
    chosen_restart: int = 0
    checkpoints: list[dict] = field(default_factory=list)
    chosen_step: int | None = None
    trigger: ReversedTrigger | None = field(default=None, repr=False)

    ARTIFACT_SUFFIX: ClassVar[str] = ".trigger.safetensors"  # the trigger beside a cached run

    def save_artifacts(self, path_for) -> list[Path]:
        """The hook of :meth:`Detection.save_artifacts`: the trigger function (when the result
        holds one) in the file ``path_for(ARTIFACT_SUFFIX)``."""
        return [] if self.trigger is None else [self.save(path_for(self.ARTIFACT_SUFFIX))]

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        """The reversed trigger function: images B×C×H×W in [0,1] -> x̃ (no gradients)."""
        if self.trigger is None:
            raise DrmguardError("this scan result holds no trigger function (loaded from JSON?)")
        return self.trigger(x)

    def to_dict(self) -> dict:
        m = self.metrics
        return {
            "defense": "drmguard", "schema": SCHEMA, "task": self.task,
            "target_names": list(self.target_names), "seed": self.seed,
            "n_benign": self.n_benign, "backdoored": bool(self.backdoored),
            "status": self.status, "R": self.r_score, "tau": self.tau,
            "collapse_ratio": self.collapse_ratio,
            "collapse_threshold": self.collapse_threshold, "score": self.score,
            "target_estimate": list(self.target_estimate),
            "reversed_output_std": m.get("reversed_output_std"),
            "benign_output_std": m.get("benign_output_std"),
            "rav": m.get("rav"), "rnv": m.get("rnv"), "r_floor": m.get("r_floor"),
            "mean_abs_change_per_pixel": m.get("mean_abs_change_per_pixel"),
            "objective": m.get("objective"),
            "trajectory": [{"step": int(s), "estimate": list(e)} for s, e in self.trajectory],
            "restarts": list(self.restarts), "chosen_restart": self.chosen_restart,
            "checkpoints": list(self.checkpoints), "chosen_step": self.chosen_step,
            "residual_scale": self.residual_scale, "timings": dict(self.timings),
            "config": dict(self.config),
            # classifiers only: the class of the target estimate (the mean softmax vector)
            **({"target_class": m["target_class"]} if m.get("target_class") is not None
               else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, trigger: ReversedTrigger | None = None) -> "ScanResult":
        """A result back from its ``to_dict()`` record (sample images are not part of it)."""
        empty = np.zeros((0, 1, 1, 1), np.uint8)
        metric_keys = ("reversed_output_std", "benign_output_std", "rav", "rnv", "r_floor",
                       "mean_abs_change_per_pixel", "objective", "target_class")
        try:
            return cls(
                backdoored=bool(d["backdoored"]), status=d["status"], r_score=d["R"],
                tau=d["tau"], collapse_ratio=d["collapse_ratio"],
                collapse_threshold=d["collapse_threshold"], score=d["score"],
                target_estimate=list(d["target_estimate"]),
                trajectory=[(t["step"], list(t["estimate"])) for t in d["trajectory"]],
                benign_images=empty, reversed_images=empty, residual_images=empty,
                residual_scale=d["residual_scale"], attention=None, timings=dict(d["timings"]),
                config=dict(d["config"]), task=d["task"], target_names=list(d["target_names"]),
                seed=d["seed"], n_benign=d["n_benign"],
                metrics={k: d.get(k) for k in metric_keys}, restarts=list(d["restarts"]),
                chosen_restart=d["chosen_restart"], checkpoints=list(d.get("checkpoints", [])),
                chosen_step=d.get("chosen_step"), trigger=trigger)
        except (KeyError, TypeError) as e:
            raise DrmguardError(f"not a DRMGuard scan record (missing or bad entry {e})") from None

    def save(self, path) -> Path:
        """Write the reversed trigger function and this result's record to one safetensors
        file (named tensors plus JSON metadata: loading it never runs code), so a later
        :func:`~.mitigation.mitigate` can reuse the trigger instead of scanning again."""
        from safetensors.torch import save_file

        if self.trigger is None:
            raise DrmguardError("this scan result holds no trigger function to save")
        gen = self.trigger.generator
        meta = {"format": TRIGGER_FORMAT, "scan": json.dumps(self.to_dict()),
                "channels": str(gen.channels), "size": json.dumps(list(gen.size))}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.trigger.tensors(), str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path, model=None, device: str = "cpu") -> "ScanResult":
        """A result written by :meth:`save`, with its trigger function (sample images are not
        saved). ``model`` is needed only for a scan run with ``mtr_map='per_image'``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # missing, truncated or not a safetensors file
            raise DrmguardError(f"cannot read the trigger file {path}: {first_line(e)}") from None
        if meta.get("format") != TRIGGER_FORMAT:
            raise DrmguardError(f"{path} is not a DRMGuard trigger file (format "
                                f"{meta.get('format')!r}, expected {TRIGGER_FORMAT!r})")
        try:
            record = json.loads(meta["scan"])
            # the trigger is the chosen search's (plain, warp or pattern; config.searches())
            cfg = DRMGuardConfig(**record["config"]).searches()[record.get("chosen_restart", 0)][1]
            channels, size = int(meta["channels"]), tuple(json.loads(meta["size"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DrmguardError(f"{path}: damaged trigger metadata ({e})") from None
        if cfg.mtr and cfg.mtr_map == "per_image" and model is None:
            raise DrmguardError(f"{path} was scanned with per-image MTR maps; pass the model")
        try:
            trigger = ReversedTrigger.from_tensors(tensors, cfg, channels, size, model)
        except RuntimeError as e:
            raise DrmguardError(f"{path}: tensors do not fit the recorded generator "
                                f"({first_line(e)})") from None
        trigger.generator.to(resolve_device(device))
        res = cls.from_dict(record, trigger)
        if trigger.weight is not None:
            res.attention = trigger.weight[0, 0].float().numpy()
        return res

    def with_samples(self, benign: ArrayDataset) -> "ScanResult":
        """Fill in the sample pictures (benign, reversed, residual) from this result's trigger
        function on ``benign`` — for a result loaded from a trigger file, which keeps none.
        The same images the scan itself picks (``config['n_sample_images']`` spread evenly)."""
        if self.trigger is None:
            raise DrmguardError("this scan result holds no trigger function to draw samples")
        device = self.trigger.device
        n = int(self.config.get("n_sample_images", 8))
        samples = _samples(self.trigger, BenignImages(benign.images, device,
                                                      torch.contiguous_format), n)
        self.benign_images, self.reversed_images = samples["benign"], samples["reversed"]
        self.residual_images, self.residual_scale = samples["residual"], samples["scale"]
        return self

    def save_images(self, out_dir, min_height: int = 96) -> dict[str, str]:
        """Write strips of the sample images (benign, reversed, residual) and the MTR map as
        PNGs (nearest-neighbour upscaled to ``min_height`` px); returns name -> path."""
        from PIL import Image

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("benign", "reversed", "residual"):
            arr = getattr(self, f"{name}_images")
            if arr is None or len(arr) == 0:
                continue
            strip = np.concatenate(list(arr), axis=1)
            paths[name] = str(_save_png(strip, out / f"{name}.png", min_height, Image))
        if self.attention is not None:
            a = np.clip(self.attention, 0, 1) * 255
            paths["attention"] = str(_save_png(a.round().astype(np.uint8), out / "attention.png",
                                               min_height, Image))
        return paths


def _save_png(arr: np.ndarray, path: Path, min_height: int, Image) -> Path:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)
    factor = max(1, int(np.ceil(min_height / arr.shape[0])))
    if factor > 1:
        img = img.resize((arr.shape[1] * factor, arr.shape[0] * factor), Image.NEAREST)
    img.save(path)
    return path


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _check_inputs(model, benign: ArrayDataset, task: Task) -> None:
    if len(benign) < 2:
        raise DrmguardError(f"DRMGuard needs at least 2 benign images, got {len(benign)}")
    if benign.image_size != tuple(model.input_size):
        raise DrmguardError(f"benign images are {benign.image_size[0]}×{benign.image_size[1]} "
                            f"but the model takes {model.input_size[0]}×{model.input_size[1]}")
    if benign.channels != model.in_channels:
        raise DrmguardError(f"benign images have {benign.channels} channels, the model "
                            f"{model.in_channels}")
    if model.num_outputs != task.dim:
        raise DrmguardError(f"the model has {model.num_outputs} outputs, task {task.name} "
                            f"{task.dim}")


def search_workers(n_searches: int, device: torch.device) -> int:
    """Processes a CPU scan runs its searches in: one per torch thread when there are at least
    as many searches as threads (2 threads, 2-4 searches on the cpu profile: the 2-core
    machine), else 1 — in-process on all the threads (a scan on 1 thread, as each zoo worker's,
    or on many threads, where the convolutions themselves use them)."""
    threads = torch.get_num_threads()
    if (device.type != "cpu" or not 2 <= threads <= n_searches
            or "fork" not in multiprocessing.get_all_start_methods()):  # Windows: in-process
        return 1
    return threads


def _run(net, images, bench, cfg, seed, progress, desc):
    """One search and its evaluation on all of D_b: (Search, evaluation)."""
    search = run_search(net, images, bench, cfg, seed, progress, desc,
                        confirm=lambda t: evaluate_trigger(net, t, images, bench, cfg))
    t0 = time.perf_counter()
    ev = search.evaluation or evaluate_trigger(net, search.trigger, images, bench, cfg)
    search.seconds["evaluate"] = time.perf_counter() - t0
    return search, ev


_SHARED: dict = {}  # a search process's (net, images, bench), inherited at fork


def _init_process(*shared) -> None:
    torch.set_num_threads(1)  # a forked child on one thread never enters OpenMP (fork-safe)
    _SHARED["args"] = shared


def _run_in_process(cfg, seed, desc):
    return _run(*_SHARED["args"], cfg, seed, False, desc)


def _run_searches(net, images, bench, plan, seed, progress, workers):
    """Every search of ``plan`` [(seed offset, config)], in order. With ``workers`` > 1 they
    run in that many forked processes on one thread each: every search seeds itself, so each
    gives exactly what it gives alone on one thread (bit for bit)."""
    descs = ["DRMGuard" + (" warp" if c.warp_grid else " pattern" if c.pattern_only else "")
             + (f" {r + 1}/{len(plan)}" if len(plan) > 1 else "") for r, (_, c) in enumerate(plan)]
    if workers <= 1:
        return [_run(net, images, bench, c, seed + off, progress, d)
                for (off, c), d in zip(plan, descs)]
    # fork, not spawn: a spawned child re-imports the caller's main module, which would rerun
    # a user's unguarded script; the model and D_b reach the children with the fork (initargs
    # of a forked pool are not pickled), only each search's config goes with its task
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_init_process, initargs=(net, images, bench)) as pool:
        futures = [pool.submit(_run_in_process, c, seed + off, d)
                   for (off, c), d in zip(plan, descs)]
        bar = progress_bar(futures, desc=f"DRMGuard ({len(plan)} searches, {workers} "
                           f"processes)", enabled=progress)
        return [f.result() for f in bar]


def scan(model, benign: ArrayDataset, task: Task, config: DRMGuardConfig | None = None,
         seed: int = 0, progress: bool = True, workers: int | None = None) -> ScanResult:
    """Scan ``model`` with DRMGuard on the defender's benign set; the model is not modified.

    ``workers``: processes for the scan's searches (``config.searches()``), each on one thread;
    None: :func:`search_workers`. Not part of the configuration: like a thread count, it
    changes only the order of float sums (with workers, each search gives what it gives on one
    thread)."""
    cfg = config or default_config("cpu", task.name)
    _check_inputs(model, benign, task)
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    model_device = next(model.parameters()).device
    model.to(device)
    net = view_for(model, task)  # a classifier is scanned on its softmax outputs (A.9)
    try:
        with device_layout(model, device) as fmt, frozen(model):
            images = BenignImages(benign.images, device, fmt)
            t0 = time.perf_counter()
            bench = precompute_benign(net, images, cfg)
            t_bench = time.perf_counter() - t0
            plan = cfg.searches()
            n_workers = search_workers(len(plan), device) if workers is None else workers
            runs = _run_searches(net, images, bench, plan, seed, progress, n_workers)
            best = chosen_restart([ev for _, ev in runs], cfg)
            search, ev = runs[best]
            samples = _samples(search.trigger, images, cfg.n_sample_images)
    finally:
        model.to(model_device)
    backdoored, status = verdict(ev["R"], ev["collapse_ratio"], cfg.tau, cfg.collapse_threshold)
    timings = {"benign_pass": t_bench, "total": time.perf_counter() - t_start}
    for key in ("pretrain", "search", "evaluate"):
        timings[key] = sum(s.seconds.get(key, 0.0) for s, _ in runs)
    metrics = {k: ev[k] for k in ("rav", "rnv", "reversed_output_std", "benign_output_std",
                                  "mean_abs_change_per_pixel", "objective")}
    metrics["r_floor"] = search.r_floor
    if task.is_classification:  # the estimated target class: argmax of the mean softmax
        metrics["target_class"] = int(np.argmax(ev["target_estimate"]))
    restarts = [{"seed": s.seed, "warp_grid": s.trigger.cfg.warp_grid,
                 "pattern_only": s.trigger.cfg.pattern_only,
                 "R": e["R"], "collapse_ratio": e["collapse_ratio"],
                 "objective": e["objective"]["loss"], "pretrain_error": s.pretrain_error,
                 "r_floor": s.r_floor, "chosen_step": s.chosen_step} for s, e in runs]
    mtr_map = search.trigger.weight
    if cfg.mtr and cfg.mtr_map == "per_image":
        mtr_map = bench["attention"].mean(0)[None, None]
    return ScanResult(
        backdoored=backdoored, status=status, r_score=ev["R"], tau=cfg.tau,
        collapse_ratio=ev["collapse_ratio"], collapse_threshold=cfg.collapse_threshold,
        score=detection_score(ev["R"], ev["collapse_ratio"], cfg.collapse_threshold),
        target_estimate=ev["target_estimate"], trajectory=search.trajectory,
        benign_images=samples["benign"], reversed_images=samples["reversed"],
        residual_images=samples["residual"], residual_scale=samples["scale"],
        attention=None if mtr_map is None else mtr_map[0, 0].float().cpu().numpy(),
        timings=timings, config=cfg.to_dict(), task=task.name,
        target_names=list(task.target_names), seed=seed, n_benign=len(benign),
        metrics=metrics, restarts=restarts, chosen_restart=best,
        checkpoints=search.checkpoints, chosen_step=search.chosen_step, trigger=search.trigger)


def chosen_restart(evaluations: list[dict], cfg) -> int:
    """The restart the scan reports (:func:`~.reverse.choose_state` over the restarts' final
    evaluations on all of D_b)."""
    return choose_state([(e["R"], e["collapse_ratio"], e["objective"]["loss"])
                         for e in evaluations], cfg)


def _samples(trigger: ReversedTrigger, images: BenignImages, n: int) -> dict:
    n = min(n, len(images))
    if n == 0:
        empty = np.zeros((0, *images.u8.shape[1:]), np.uint8)
        return {"benign": empty, "reversed": empty, "residual": empty, "scale": 0.0}
    idx = torch.from_numpy(np.linspace(0, len(images) - 1, n).round().astype(np.int64))
    x = images.get(idx)
    xt = trigger.generate(x)[1]
    res = (xt - x).abs()
    scale = float(res.max())
    return {"benign": _to_uint8(x), "reversed": _to_uint8(xt),
            "residual": _to_uint8(res / scale if scale > 0 else res), "scale": scale}
