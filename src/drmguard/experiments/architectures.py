"""The architectures experiment (the paper's Tables 12-13): identification and DRMGuard's
mitigation on zoos of other architectures, one table with a row per (architecture, attack).

Each architecture's zoo is an ordinary identification + mitigation zoo (``arch=...``), so its own
tables are written as well (``identification-<task>-<profile>-<arch>``,
``mitigation-<task>-<profile>-<arch>``); this module adds the summary across architectures,
``architectures-<task>-<profile>``. The mitigation columns count implanted models only, as the
identification counts do; the models left out are listed.
"""

from __future__ import annotations

import numpy as np

from .identification import identification_work, plan_identification, run_identification
from .mitigation import mitigation_work, plan_mitigation, run_mitigation
from .results import fmt, provenance, write_results

DEFAULT_ARCHS = ["resnet34", "mobilenet_v1"]
DEFAULT_ATTACKS = ["badnets", "wanet"]


def architectures_work(task: str, archs: list[str], attacks: list[str], n_benign: int,
                       n_backdoored: int, profile: str = "cpu"):
    """Every architecture's models and runs, as one piece of work for an executor."""
    from .executor import Work

    return sum((identification_work(task, attacks, n_benign, n_backdoored, profile, arch=a)
                + mitigation_work(task, attacks, n_backdoored, profile, arch=a)
                for a in archs), Work())


def plan_architectures(task: str, archs: list[str], attacks: list[str], n_benign: int,
                       n_backdoored: int, profile: str = "cpu", cache_dir: str | None = None
                       ) -> list[tuple[str, dict]]:
    """(architecture, :meth:`~.zoo.Zoo.plan` record) pairs: per architecture, what its
    identification and then its mitigation would still compute."""
    check(archs, attacks)
    plans = []
    for a in archs:
        plans.append((a, plan_identification(task, attacks, n_benign, n_backdoored, profile,
                                             cache_dir=cache_dir, arch=a)))
        plans.append((a, plan_mitigation(task, attacks, n_backdoored, profile,
                                         cache_dir=cache_dir, arch=a)))
    return plans


def check(archs: list[str], attacks: list[str]) -> None:
    """Unknown architecture or attack names fail here, before any model is trained."""
    from ..attacks import attack_class
    from ..models.registry import ARCHS

    for a in archs:
        ARCHS.get(a)
    for a in attacks:
        attack_class(a)


def result_name(task: str, profile: str) -> str:
    return f"architectures-{task}-{profile}"


def summary_rows(arch: str, ident: dict, mitig: dict) -> list[dict]:
    """One row per attack: identification counts (implanted models only, from
    :func:`~.identification.summarise`) and the mean RE/AE/DAE before and after DRMGuard's
    mitigation over the implanted models."""
    implanted = {r["model"] for r in ident["models"] if r.get("implanted")}
    rows = []
    for s in ident["summary"]:
        if s["attack"] == "all":
            continue
        row = {"arch": arch, "attack": s["attack"],
               **{k: s.get(k) for k in ("TP", "FP", "FN", "TN", "accuracy", "roc_auc",
                                        "not_implanted", "target_error_mean")}}
        mine = [r for r in mitig["models"] if r["attack"] == s["attack"]]
        row["left_out"] = sorted({r["model"] for r in mine if r["model"] not in implanted})
        for method, tag in (("undefended", "before"), ("drmguard", "after")):
            sel = [r for r in mine if r["method"] == method and r["model"] in implanted]
            for k in ("RE", "AE", "DAE"):
                row[f"{k}_{tag}"] = float(np.mean([r[k] for r in sel])) if sel else None
        rows.append(row)
    return rows


def run_architectures(task: str, archs: list[str] | None = None,
                      attacks: list[str] | None = None, n_benign: int = 5,
                      n_backdoored: int = 5, profile: str = "cpu",
                      cache_dir: str | None = None, out_dir: str = "results",
                      command: str = "", progress: bool = True, executor=None,
                      on_arch=None) -> dict:
    """Identification and mitigation tables per architecture, then the summary across them;
    an executor computes every architecture's zoo in one parallel phase first. ``on_arch``
    (``f(arch, rows)``) is called as each architecture's rows are ready."""
    from .zoo import Zoo

    archs, attacks = list(archs or DEFAULT_ARCHS), list(attacks or DEFAULT_ATTACKS)
    check(archs, attacks)
    if executor is not None:
        executor.run(Zoo(cache_dir, progress),
                     architectures_work(task, archs, attacks, n_benign, n_backdoored, profile))
    rows = []
    for a in archs:
        ident = run_identification(task, attacks, n_benign, n_backdoored, profile, ["drmguard"],
                                   cache_dir, out_dir, a, command=command, progress=progress)
        mitig = run_mitigation(task, attacks, n_backdoored, profile, ["drmguard"], cache_dir,
                               out_dir, a, command=command, progress=progress)
        mine = summary_rows(a, ident, mitig)
        rows += mine
        if on_arch is not None:
            on_arch(a, mine)
    record = {"provenance": provenance(command), "task": task, "profile": profile,
              "archs": archs, "attacks": attacks, "n_benign": n_benign,
              "n_backdoored": n_backdoored, "summary": rows}
    write_results(out_dir, result_name(task, profile), record, to_markdown(record))
    return record


def to_markdown(rec: dict) -> str:
    lines = [f"# Architectures — {rec['task']}, profile {rec['profile']}", "",
             f"{rec['n_benign']} benign + {rec['n_backdoored']} backdoored models per attack and "
             "architecture; DRMGuard at the profile's defaults. Identification counts and the "
             "mitigation means are over the models whose attack implanted (the others are "
             "listed). Errors in the task's units (degrees for gaze and head pose). Each "
             "architecture's own identification and mitigation tables carry the per-model rows.",
             "", "| architecture | attack | TP | FP | FN | TN | accuracy | ROC-AUC | "
             "target error | RE before | DAE before | RE after | DAE after | not implanted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["summary"]:
        left = ", ".join(m.rsplit("/", 1)[-1] for m in r["left_out"]) or "–"
        lines.append(f"| {r['arch']} | {r['attack']} | {r['TP']} | {r['FP']} | {r['FN']} | "
                     f"{r['TN']} | {fmt(r['accuracy'], 2)} | {fmt(r['roc_auc'], 2)} | "
                     f"{fmt(r['target_error_mean'], 1)} | {fmt(r['RE_before'], 2)} | "
                     f"{fmt(r['DAE_before'], 2)} | {fmt(r['RE_after'], 2)} | "
                     f"{fmt(r['DAE_after'], 2)} | {left} |")
    return "\n".join(lines) + "\n"
