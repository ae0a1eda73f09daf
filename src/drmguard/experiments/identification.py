"""Backdoor identification on a model zoo (the paper's Tables 3, 5, 7–9, 11–13 shapes).

For each attack, ``n_backdoored`` backdoored models (seeds 0..n-1) are scored together with the
same ``n_benign`` benign models (seeds 0..n-1) by every requested detector. Per attack and over
all attacks we report the confusion counts (TP, FP, FN, TN), accuracy and ROC-AUC. Every model
also gets its attack metrics (RE, AE, DAE) so a table never hides an attack that did not take.
"""

from __future__ import annotations

import time

import torch

from ..defenses.base import get_detector, resolved_config
from .data import experiment_task
from ..utils import progress_bar
from .results import md_table, provenance, write_results
from .zoo import ModelSpec, Zoo


def attack_record(zoo: Zoo, spec: ModelSpec, model, attack, meta) -> dict:
    """Attack metrics of a zoo model on the test split (cached)."""
    if attack is None:
        def compute():
            from ..training import evaluate
            task = experiment_task(spec.task)
            re = evaluate(model, zoo.splits(spec).test, task)["error"]
            return {"RE": re, **({"accuracy": 1.0 - re} if task.is_classification else {})}
    else:
        def compute():
            from ..metrics import attack_metrics
            return attack_metrics(model, attack, zoo.splits(spec).test,
                                  experiment_task(spec.task))
    return zoo.cached_run(spec, "attack", "metrics", {}, compute)


def trigger_record(zoo: Zoo, spec: ModelSpec, model, attack,
                   defenses: list[str] = ("drmguard",)) -> dict:
    """What the first of ``defenses`` that measures triggers (:meth:`Defence.trigger_cost`;
    DRMGuard: R, change per pixel and collapse ratio) sees in the attack's *own* trigger on the
    zoo's D_b (cached; empty for a benign model, or when no such defence is requested): what
    its rule would see had its search found exactly the real trigger."""
    det = trigger_cost_detector(defenses, spec.profile, spec.task)
    if attack is None or det is None:
        return {}

    def compute():
        return det.trigger_cost(model, zoo.splits(spec).benign.tensors()[0], attack.apply)
    return zoo.cached_run(spec, "attack", det.trigger_cost_run, {}, compute)


def trigger_cost_detector(defenses, profile: str, task: str):
    """The first of ``defenses`` that measures given triggers (``trigger_cost_run``), or None."""
    from ..defenses.base import DETECTORS

    for name in defenses:
        if name in DETECTORS:
            det = get_detector(name, profile, task)
            if det.trigger_cost_run is not None:
                return det
    return None


def saved_detection(zoo: Zoo, spec: ModelSpec, model, defense: str, overrides: dict,
                    seed: int = 0, device: str | None = None):
    """The detection that identification ran on ``spec`` with this defence, settings and seed,
    with the artifacts it kept (DRMGuard: its trigger function), or None when the zoo does not
    hold it or the defence keeps none. ``device``: where to load them (default: the
    defence's configured device)."""
    from dataclasses import replace

    from ..defenses.base import DETECTORS

    if defense not in DETECTORS:
        return None
    det, config = detect_config(spec, defense, overrides, None, seed)
    if not zoo.has_run(spec, "detect", defense, config):
        return None
    cfg = det.config_for(spec.task)
    return det.load_prior(lambda suffix: zoo.artifact_path(spec, "detect", defense, config,
                                                           suffix),
                          model, replace(cfg, device=device) if device else cfg)


def saved_scan(zoo: Zoo, spec: ModelSpec, model, overrides: dict, seed: int = 0,
               device: str | None = None):
    """The DRMGuard scan (a ``ScanResult`` with its trigger function) that identification ran
    on ``spec`` with these settings and seed, or None (see :func:`saved_detection`)."""
    d = saved_detection(zoo, spec, model, "drmguard", overrides, seed, device)
    return None if d is None else d.result


def overrides_for(overrides: dict | None, defense: str) -> dict:
    """A defence's own options out of ``overrides`` = {defence name: {option: value}}; a flat
    {option: value} (the older spelling, before every defence took options) means DRMGuard's."""
    overrides = overrides or {}
    if all(isinstance(v, dict) for v in overrides.values()):
        return dict(overrides.get(defense, {}))
    return dict(overrides) if defense == "drmguard" else {}


def detect_config(spec: ModelSpec, defense: str, overrides: dict,
                  benign_limit: int | None = None, seed: int = 0,
                  threads: int | None = None):
    """(detector, cache key of its run on ``spec``). ``threads``: torch threads the run must
    use (part of the key: float sums, hence a search, depend on them); None: the worker's."""
    det = get_detector(defense, spec.profile, spec.task, **overrides)
    config = {"overrides": overrides, "benign_limit": benign_limit, "seed": seed,
              "resolved": resolved_config(det, spec.task)}
    if threads is not None:
        config["threads"] = int(threads)
    return det, config


def detect_record(zoo: Zoo, spec: ModelSpec, model, defense: str, overrides: dict,
                  benign_limit: int | None = None, seed: int = 0,
                  threads: int | None = None) -> dict:
    """One detector on one zoo model with the zoo's benign set D_b (cached); ``seed``: the
    detector's seed, ``threads``: torch threads for this run (None: as set)."""
    det, config = detect_config(spec, defense, overrides, benign_limit, seed, threads)

    def compute():
        benign = zoo.splits(spec).benign
        if benign_limit:
            benign = benign.subset(range(min(benign_limit, len(benign))))
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            d = det.detect(model, benign, experiment_task(spec.task), seed=seed,
                           progress=zoo.progress)
            d.save_artifacts(lambda suffix: zoo.artifact_path(spec, "detect", defense, config,
                                                              suffix))
            rec = d.to_dict()
            rec["wall_seconds"] = time.perf_counter() - t0
            rec["threads"] = torch.get_num_threads()
        finally:
            torch.set_num_threads(before)
        return rec
    return zoo.cached_run(spec, "detect", defense, config, compute)


def model_specs(task: str, profile: str, attacks: list[str], n_benign: int,
                n_backdoored: int | dict[str, int], arch: str | None = None,
                attack_options: dict | None = None, first_seed: int = 0) -> list[ModelSpec]:
    """Benign seeds f..f+n_benign-1, then per attack seeds f..f+n-1 (f = ``first_seed``: 0 for
    the tables, e.g. 100 for development models the tables never use; ``n_backdoored`` is one
    count for every attack or a per-attack dict)."""
    opts = tuple(sorted((attack_options or {}).items()))
    f = int(first_seed)
    specs = [ModelSpec(task, profile, None, s, arch) for s in range(f, f + n_benign)]
    for a in attacks:
        n = n_backdoored[a] if isinstance(n_backdoored, dict) else n_backdoored
        specs += [ModelSpec(task, profile, a, s, arch, opts) for s in range(f, f + n)]
    return specs


def parse_attack_counts(items: list[str], default: int) -> tuple[list[str], dict[str, int]]:
    """``["badnets", "wanet:5"]`` -> (names, per-attack model counts; ``default`` when absent)."""
    from ..errors import DrmguardError

    names, counts = [], {}
    for item in items:
        name, _, count = item.partition(":")
        try:
            n = int(count) if count else default
        except ValueError:
            raise DrmguardError(f"bad model count in '{item}' (use NAME or NAME:COUNT)") from None
        if n < 1:
            raise DrmguardError(f"the model count in '{item}' must be at least 1")
        names.append(name)
        counts[name] = n
    return names, counts


def target_error(task, estimate, real_target) -> float | None:
    """The task's error between a defence's target estimate and the model's real target (the
    mean output on triggered test inputs); None when either is missing."""
    if estimate is None or real_target is None:
        return None
    return float(task.error(torch.tensor([estimate], dtype=torch.float32),
                            torch.tensor([real_target], dtype=torch.float32)).mean())


def implant_status(att: dict, backdoored: bool) -> bool | None:
    """Whether a zoo model's attack implanted (:func:`~drmguard.metrics.implanted`); None for
    a benign model, or for attack metrics recorded before CTE was (``--rescan`` adds it)."""
    from ..metrics import implanted

    if not backdoored or "CTE" not in att:
        return None
    return implanted(att)


def summarise(records: list[dict], defenses: list[str], attacks: list[str]) -> list[dict]:
    """Confusion counts, accuracy, ROC-AUC and the mean target-estimate error (over the
    backdoored models) per (defence, attack) and over all attacks. Backdoored models whose
    attack did not implant (``implanted`` False) are not positives: they are left out of the
    counts and counted apart (``not_implanted``)."""
    from ..metrics import detection_metrics

    rows = []
    for d in defenses:
        for a in [*attacks, "all"] if len(attacks) > 1 else attacks:
            mine = [r for r in records if r["defense"] == d and
                    (r["attack"] is None or a == "all" or r["attack"] == a)]
            sel = [r for r in mine if r.get("implanted") is not False]
            m = detection_metrics([r["attack"] is not None for r in sel],
                                  [r["score"] for r in sel], [r["flagged"] for r in sel])
            errs = [r["target_error"] for r in sel
                    if r["attack"] is not None and r.get("target_error") is not None]
            rows.append({"defense": d, "attack": a, **m,
                         "not_implanted": len(mine) - len(sel),
                         "target_error_mean": sum(errs) / len(errs) if errs else None})
    return rows


def identification_work(task: str, attacks: list[str], n_benign: int,
                        n_backdoored: int | dict[str, int], profile: str = "cpu",
                        defenses: list[str] | None = None, arch: str | None = None,
                        overrides: dict | None = None, benign_limit: int | None = None,
                        attack_options: dict | None = None, first_seed: int = 0,
                        seed: int = 0, threads: int | None = None):
    """Everything :func:`run_identification` computes, as tasks for an
    :class:`~.executor.Executor`: the models, their attack records, the real trigger's cost
    (when a requested defence measures it) and the detections."""
    from functools import partial

    from .executor import Run, Work

    defenses = list(defenses or ["drmguard"])
    specs = model_specs(task, profile, attacks, n_benign, n_backdoored, arch, attack_options,
                        first_seed)
    cost_det = trigger_cost_detector(defenses, profile, task)
    cost_run = cost_det.trigger_cost_run if cost_det else None
    runs = []
    for spec in specs:
        runs.append(Run(spec, attack_record, "attack", "metrics", gpu=False))
        if spec.backdoored and cost_run:
            runs.append(Run(spec, partial(trigger_record, defenses=tuple(defenses)), "attack",
                            cost_run, gpu=False))
        for d in defenses:
            ov = overrides_for(overrides, d)
            runs.append(Run(spec, partial(detect_record, defense=d, overrides=ov,
                                          benign_limit=benign_limit, seed=seed,
                                          threads=threads), "detect", d,
                            detect_config(spec, d, ov, benign_limit, seed, threads)[1]))
    return Work(specs, runs)


def plan_identification(task: str, attacks: list[str], n_benign: int,
                        n_backdoored: int | dict[str, int], profile: str = "cpu",
                        defenses: list[str] | None = None, cache_dir: str | None = None,
                        arch: str | None = None, overrides: dict | None = None,
                        benign_limit: int | None = None, rescan: bool = False,
                        first_seed: int = 0) -> dict:
    """What :func:`run_identification` would do with this cache, without doing it: the models
    to train and the detections to run, each with the median wall time the cache recorded for
    the same kind of work (None when nothing alike is cached yet)."""
    specs = model_specs(task, profile, attacks, n_benign, n_backdoored, arch,
                        first_seed=first_seed)
    runs = [(spec, d, detect_config(spec, d, overrides_for(overrides, d), benign_limit)[1])
            for spec in specs for d in defenses or ["drmguard"]]
    return Zoo(cache_dir, progress=False, rescan=rescan).plan(specs, "detect", runs)


def run_identification(task: str, attacks: list[str], n_benign: int,
                       n_backdoored: int | dict[str, int],
                       profile: str = "cpu", defenses: list[str] | None = None,
                       cache_dir: str | None = None, out_dir: str = "results",
                       arch: str | None = None, overrides: dict | None = None,
                       benign_limit: int | None = None, name: str | None = None,
                       command: str = "", progress: bool = True,
                       attack_options: dict | None = None, rescan: bool = False,
                       first_seed: int = 0, executor=None, seed: int = 0,
                       threads: int | None = None) -> dict:
    """Identification table on a zoo; ``rescan`` recomputes cached runs that other code made
    (see :class:`Zoo`); ``first_seed`` > 0 for development models (calibration); an
    :class:`~.executor.Executor` computes the zoo in parallel first; ``seed``/``threads``: the
    detectors' seed and torch threads (the stability experiment varies them)."""
    defenses = defenses or ["drmguard"]
    zoo = Zoo(cache_dir, progress, rescan)
    if executor is not None:
        executor.run(zoo, identification_work(task, attacks, n_benign, n_backdoored, profile,
                                              defenses, arch, overrides, benign_limit,
                                              attack_options, first_seed, seed, threads))
    specs = model_specs(task, profile, attacks, n_benign, n_backdoored, arch, attack_options,
                        first_seed)
    records = []
    t = experiment_task(task)
    for spec in progress_bar(specs, desc="models", enabled=progress):
        model, attack, meta = zoo.model(spec)
        att = attack_record(zoo, spec, model, attack, meta)
        real = trigger_record(zoo, spec, model, attack, defenses)
        for d in defenses:
            det = detect_record(zoo, spec, model, d, overrides_for(overrides, d), benign_limit,
                                seed, threads)
            records.append({
                "model": spec.label(), "key": spec.key(), "attack": spec.attack,
                "seed": spec.seed, "defense": d, "score": det["score"],
                "flagged": det["backdoored"], "target_estimate": det.get("target_estimate"),
                "real_target": att.get("real_target"), "RE": att.get("RE"),
                "AE": att.get("AE"), "DAE": att.get("DAE"), "CTE": att.get("CTE"),
                "implanted": implant_status(att, spec.backdoored),
                "target_error": target_error(t, det.get("target_estimate"),
                                             att.get("real_target")),
                "accuracy": att.get("accuracy"), "ASR": att.get("ASR"),
                "target_class": att.get("target_class"),
                "estimated_class": (int(det["details"].get("target_class"))
                                    if det.get("details", {}).get("target_class") is not None
                                    else None),
                "real_trigger_R": real.get("R"),
                "real_trigger_collapse": real.get("collapse_ratio"),
                "seconds": det.get("seconds"), "threads": det.get("threads"),
                "code": det.get("code"),
                "details": det.get("details", {})})
    summary = summarise(records, defenses, attacks)
    data_name = "digits" if task == "classification" else task  # the classifiers' data
    name = name or f"identification-{data_name}-{profile}" + (f"-{arch}" if arch else "")
    record = {"provenance": provenance(command), "task": task, "profile": profile, "arch": arch,
              "attacks": attacks, "n_benign": n_benign, "n_backdoored": n_backdoored,
              "first_seed": first_seed, "defenses": defenses, "overrides": overrides or {},
              "benign_limit": benign_limit, "scan_seed": seed, "threads": threads,
              "summary": summary, "models": records}
    write_results(out_dir, name, record, to_markdown(record))
    return record


def format_counts(n) -> str:
    """Model counts for a table header: ``5`` or ``10 (badnets), 2 (wanet)``."""
    return ", ".join(f"{v} ({k})" for k, v in n.items()) if isinstance(n, dict) else str(n)


def reported_search(details: dict) -> str | None:
    """Which of a DRMGuard scan's searches it reports: ``plain``, ``warp`` (the warp search
    of ``warp_search``), ``pattern`` (of ``pattern_search``), with its index when there are
    several plain ones; None for other defences."""
    runs, i = details.get("restarts"), details.get("chosen_restart")
    if not runs or i is None:
        return None

    def kind(r):
        return "warp" if r.get("warp_grid") else "pattern" if r.get("pattern_only") else "plain"

    plain = sum(1 for r in runs if kind(r) == "plain")
    return kind(runs[i]) if kind(runs[i]) != "plain" or plain == 1 else f"plain {i + 1}"


def to_markdown(rec: dict) -> str:
    from ..metrics import IMPLANT_FRACTION

    head = (f"# Backdoor identification — {rec['task']}, profile {rec['profile']}"
            + (f", {rec['arch']}" if rec.get("arch") else "") + "\n\n"
            f"{rec['n_benign']} benign models and {format_counts(rec['n_backdoored'])} "
            f"backdoored models per attack; defender's benign set = the zoo's D_b"
            + (f" (first {rec['benign_limit']} images)" if rec.get("benign_limit") else "")
            + (f"; DRMGuard overrides {rec['overrides']}" if rec.get("overrides") else "") + ".\n\n")
    if rec["task"] == "classification":
        return head + classification_markdown(rec)
    rows = [[s["defense"], s["attack"], s["TP"], s["FP"], s["FN"], s["TN"], s["accuracy"],
             s["roc_auc"], s.get("target_error_mean"), s.get("not_implanted")]
            for s in rec["summary"]]
    table = md_table(["defence", "attack", "TP", "FP", "FN", "TN", "accuracy", "ROC-AUC",
                      "estimate error (mean)", "not implanted (left out)"], rows)
    mrows = [[r["model"], r["defense"], r["score"], r["flagged"], r["details"].get("R"),
              r["details"].get("collapse_ratio"), reported_search(r["details"]), r["RE"],
              r["AE"], r["DAE"], r.get("CTE"), r.get("implanted"), r.get("real_trigger_R"),
              r.get("real_trigger_collapse"), r["target_estimate"], r["real_target"],
              r.get("target_error"), r["seconds"]]
             for r in rec["models"]]
    models = md_table(["model", "defence", "score", "flagged", "R", "collapse", "search", "RE",
                       "AE", "DAE", "CTE", "implanted", "real R", "real collapse",
                       "target estimate", "real target", "estimate error", "seconds"], mrows)
    note = ("\n\n*real R*, *real collapse*: R and collapse ratio of the attack's own trigger on "
            "D_b — what DRMGuard's rule (R < τ and collapse below its threshold) would see had "
            "the search found exactly that trigger. *implanted*: AE < "
            f"{IMPLANT_FRACTION:g} · CTE (CTE: the "
            "clean outputs' error to the target; `drmguard.metrics.implanted`); a backdoored "
            "model whose attack did not implant is no positive and is left out of the counts "
            "above; – : recorded before CTE was measured (`--rescan` measures it). *R*, "
            "*collapse*: the scan's reported state; *search*: which of DRMGuard's searches "
            "reported it (plain, or the warp search of `warp_search`).\n")
    return head + table + "\n\n## Per model\n\n" + models + note


def classification_markdown(rec: dict) -> str:
    """The identification tables of classifiers: clean accuracy and attack success rate (ASR)
    instead of RE/AE/DAE; the estimated target class against the real one."""
    from ..metrics import IMPLANT_ASR

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    rows = []
    for s in rec["summary"]:
        mine = [r for r in rec["models"] if r["defense"] == s["defense"] and r["attack"] is not None
                and (s["attack"] == "all" or r["attack"] == s["attack"])
                and r.get("implanted") is not False]
        hits = [r["estimated_class"] == r["target_class"] for r in mine if r["flagged"]
                and r.get("estimated_class") is not None]
        rows.append([s["defense"], s["attack"], s["TP"], s["FP"], s["FN"], s["TN"],
                     s["accuracy"], s["roc_auc"],
                     f"{sum(hits)}/{len(hits)}" if hits else "–", s.get("not_implanted")])
    table = md_table(["defence", "attack", "TP", "FP", "FN", "TN", "accuracy", "ROC-AUC",
                      "target class right (flagged)", "not implanted (left out)"], rows)
    first = rec["defenses"][0]
    groups = {}
    for r in rec["models"]:
        if r["defense"] == first:
            groups.setdefault(r["attack"] or "benign", []).append(r)
    zrows = [[k, len(v), mean([r.get("accuracy") for r in v]),
              min((r.get("accuracy") for r in v if r.get("accuracy") is not None), default=None),
              mean([r.get("ASR") for r in v]) if k != "benign" else None,
              min((r.get("ASR") for r in v if r.get("ASR") is not None), default=None)
              if k != "benign" else None]
             for k, v in groups.items()]
    zoo = md_table(["models", "n", "clean accuracy (mean)", "clean accuracy (min)",
                    "ASR (mean)", "ASR (min)"], zrows)
    mrows = [[r["model"], r["defense"], r["score"], r["flagged"], r.get("accuracy"),
              r.get("ASR"), r.get("target_class"), r.get("estimated_class"),
              r.get("implanted"), r.get("real_trigger_R"), r.get("real_trigger_collapse"),
              r["seconds"]]
             for r in rec["models"]]
    models = md_table(["model", "defence", "score", "flagged", "clean accuracy", "ASR",
                       "target class", "estimated class", "implanted", "real R",
                       "real collapse", "seconds"], mrows)
    note = (f"\n\n*ASR*: attack success rate, the fraction of triggered test images whose true "
            f"class is not the target that are classified as the target; *implanted*: ASR ≥ "
            f"{IMPLANT_ASR:g} (a backdoored model below it is no positive and is left out of "
            "the counts). *estimated class*: DRMGuard's argmax of the mean softmax on its "
            "reversed images; Neural Cleanse's class with the smallest mask. *real R*, *real "
            "collapse*: DRMGuard's R and collapse ratio of the attack's own trigger on D_b.\n")
    return (table + "\n\n## Zoo\n\n" + zoo + "\n\n## Per model\n\n" + models + note)
