"""Backdoor mitigation on a model zoo (the paper's Tables 4, 6, 13 shapes).

Each backdoored model is repaired by every requested mitigator using only the defender's benign
set D_b; RE (clean error), AE (error to the target on triggered test inputs — should rise) and
DAE (error to the true labels on triggered test inputs — should fall) are measured on the test
split, before and after.
"""

from __future__ import annotations

import time

import numpy as np

from ..defenses.base import get_mitigator, resolved_config
from ..tasks import get_task
from ..utils import progress_bar
from .identification import attack_record, format_counts, model_specs, saved_detection
from .results import md_table, provenance, write_results
from .zoo import ModelSpec, Zoo


def mitigate_config(spec: ModelSpec, name: str, overrides: dict, seed: int = 0):
    """(mitigator, cache key of its run on ``spec``)."""
    mitigator = get_mitigator(name, spec.profile, spec.task, **overrides)
    return mitigator, {"overrides": overrides, "seed": seed,
                       "resolved": resolved_config(mitigator, spec.task)}


def mitigate_record(zoo: Zoo, spec: ModelSpec, model, attack, name: str, overrides: dict,
                    seed: int = 0) -> dict:
    """One mitigator on one zoo model (cached). A mitigator that is also a detector (DRMGuard)
    gets the identification run of the same defence, model, settings and seed as ``prior``
    when the zoo holds it (DRMGuard reuses that scan's trigger: the scan it would run is the
    same computation)."""
    mitigator, key = mitigate_config(spec, name, overrides, seed)

    def compute():
        from ..metrics import attack_metrics

        task = get_task(spec.task)
        t0 = time.perf_counter()
        prior = saved_detection(zoo, spec, model, name, overrides, seed)
        fixed, info = mitigator.mitigate(
            model, zoo.splits(spec).benign, task, seed=seed, progress=zoo.progress, prior=prior)
        m = attack_metrics(fixed, attack, zoo.splits(spec).test, task)
        return {"RE": m["RE"], "AE": m["AE"], "DAE": m["DAE"],
                "seconds": time.perf_counter() - t0, "info": info}
    return zoo.cached_run(spec, "mitigate", name, key, compute)


def mitigation_specs(task: str, profile: str, attacks: list[str],
                     n_backdoored: int | dict[str, int], arch: str | None = None
                     ) -> list[ModelSpec]:
    """Seeds 0..n-1 of every attack (``n_backdoored``: one count or a per-attack dict)."""
    return model_specs(task, profile, attacks, 0, n_backdoored, arch)


def mitigation_work(task: str, attacks: list[str], n_backdoored: int | dict[str, int],
                    profile: str = "cpu", mitigations: list[str] | None = None,
                    arch: str | None = None):
    """Everything :func:`run_mitigation` computes, as tasks for an
    :class:`~.executor.Executor`; the mitigations are a later stage than the detections of
    :func:`~.identification.identification_work`, whose DRMGuard scan they reuse."""
    from functools import partial

    from .executor import Run, Work

    specs = mitigation_specs(task, profile, attacks, n_backdoored, arch)
    runs = [Run(spec, attack_record, "attack", "metrics", gpu=False) for spec in specs]
    runs += [Run(spec, partial(mitigate_record, name=m, overrides={}), "mitigate", m,
                 mitigate_config(spec, m, {})[1], stage=1)
             for spec in specs for m in mitigations or ["drmguard"]]
    return Work(specs, runs)


def plan_mitigation(task: str, attacks: list[str], n_backdoored: int | dict[str, int],
                    profile: str = "cpu",
                    mitigations: list[str] | None = None, cache_dir: str | None = None,
                    arch: str | None = None, rescan: bool = False) -> dict:
    """What :func:`run_mitigation` would do with this cache, without doing it (see
    :meth:`Zoo.plan`). A DRMGuard mitigation whose identification scan the zoo keeps is
    faster than the recorded times of one that scanned again."""
    specs = mitigation_specs(task, profile, attacks, n_backdoored, arch)
    runs = [(spec, m, mitigate_config(spec, m, {})[1]) for spec in specs
            for m in mitigations or ["drmguard"]]
    return Zoo(cache_dir, progress=False, rescan=rescan).plan(specs, "mitigate", runs)


def run_mitigation(task: str, attacks: list[str], n_backdoored: int | dict[str, int],
                   profile: str = "cpu",
                   mitigations: list[str] | None = None, cache_dir: str | None = None,
                   out_dir: str = "results", arch: str | None = None, name: str | None = None,
                   command: str = "", progress: bool = True, rescan: bool = False,
                   executor=None) -> dict:
    """Mitigation table on a zoo; ``rescan`` recomputes cached runs that other code made
    (see :class:`Zoo`); an :class:`~.executor.Executor` computes the zoo in parallel first."""
    mitigations = mitigations or ["drmguard"]
    zoo = Zoo(cache_dir, progress, rescan)
    if executor is not None:
        executor.run(zoo, mitigation_work(task, attacks, n_backdoored, profile, mitigations,
                                          arch))
    records = []
    specs = mitigation_specs(task, profile, attacks, n_backdoored, arch)
    for spec in progress_bar(specs, desc="models", enabled=progress):
        model, attack, meta = zoo.model(spec)
        before = attack_record(zoo, spec, model, attack, meta)
        records.append({"model": spec.label(), "attack": spec.attack, "method": "undefended",
                        "RE": before["RE"], "AE": before["AE"], "DAE": before["DAE"]})
        for m in mitigations:
            r = mitigate_record(zoo, spec, model, attack, m, {})
            records.append({"model": spec.label(), "attack": spec.attack, "method": m,
                            "RE": r["RE"], "AE": r["AE"], "DAE": r["DAE"],
                            "seconds": r["seconds"], "code": r.get("code")})
    summary = []
    for a in attacks:
        for m in ["undefended", *mitigations]:
            sel = [r for r in records if r["attack"] == a and r["method"] == m]
            summary.append({"attack": a, "method": m, "n": len(sel),
                            **{f"{k}_mean": float(np.mean([r[k] for r in sel])) for k in
                               ("RE", "AE", "DAE")},
                            **{f"{k}_std": float(np.std([r[k] for r in sel])) for k in
                               ("RE", "AE", "DAE")}})
    name = name or f"mitigation-{task}-{profile}" + (f"-{arch}" if arch else "")
    record = {"provenance": provenance(command), "task": task, "profile": profile, "arch": arch,
              "attacks": attacks, "n_backdoored": n_backdoored, "mitigations": mitigations,
              "summary": summary, "models": records}
    write_results(out_dir, name, record, to_markdown(record))
    return record


def to_markdown(rec: dict) -> str:
    units = "degrees" if rec["task"] in ("gaze", "headpose") else "target units"
    head = (f"# Backdoor mitigation — {rec['task']}, profile {rec['profile']}"
            + (f", {rec['arch']}" if rec.get("arch") else "")
            + f"\n\n{format_counts(rec['n_backdoored'])} backdoored models per attack; errors in "
            f"{units} on the "
            "test split (mean ± std over models). AE should rise after mitigation, DAE fall "
            "towards RE.\n\n")
    rows = [[s["attack"], s["method"], s["n"], f"{s['RE_mean']:.2f} ± {s['RE_std']:.2f}",
             f"{s['AE_mean']:.2f} ± {s['AE_std']:.2f}", f"{s['DAE_mean']:.2f} ± {s['DAE_std']:.2f}"]
            for s in rec["summary"]]
    return head + md_table(["attack", "method", "models", "RE", "AE", "DAE"], rows)
