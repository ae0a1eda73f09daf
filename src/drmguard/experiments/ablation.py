"""Ablations of DRMGuard on one zoo (the paper's Tables 7–9 shapes, plus our [ours] options).

Each variant is an identification run with DRMGuard config overrides (or a smaller benign set);
all variants share the cached models, so an ablation costs scans only.
"""

from __future__ import annotations

from .executor import Work
from .identification import identification_work, run_identification
from .results import md_table, provenance, write_results
from .zoo import Zoo


def variants(task: str, profile: str, which: list[str]) -> list[tuple[str, dict, int | None]]:
    """(name, DRMGuard overrides, benign-set limit) for the requested ablation groups."""
    from ..defenses.drmguard.config import PAPER_LAMBDA1_RAW, default_config

    base = default_config(profile, task)
    out: list[tuple[str, dict, int | None]] = [("default", {}, None)]
    if "fsrt" in which:
        out.append(("without FSRT (λ3 = 0)", {"lambda3": 0.0}, None))
    if "mtr" in which:
        out.append(("without MTR", {"mtr": False}, None))
    if "lambda3" in which:
        out += [(f"λ3 = {f * base.lambda3:g}", {"lambda3": f * base.lambda3}, None)
                for f in (0.25, 0.5, 1.25)]
    if "lambda1" in which:
        out += [(f"λ1 = {f * base.lambda1:g}", {"lambda1": f * base.lambda1}, None)
                for f in (0.5, 2.0)]
    if "units" in which:  # the paper's raw output term, in the task's own units
        raw = PAPER_LAMBDA1_RAW.get(task, PAPER_LAMBDA1_RAW["generic"])
        out.append((f"raw output term (λ1 = {raw:g}, units-dependent)",
                    {"scale_free": False, "lambda1": raw}, None))
    if "select" in which:  # which state of the search the scan reports
        out += [(f"report the {sel.replace('_', ' ')} state", {"select": sel}, None)
                for sel in ("final", "lowest_objective", "cheapest_collapse") if sel != base.select]
    if "l1" in which:
        out += [(f"L1 weight = {f * base.l1_weight:g}", {"l1_weight": f * base.l1_weight}, None)
                for f in (0.1, 0.3)]
        out.append(("no L1 warm-up", {"l1_warmup": 0.0}, None))
    if "benign" in which:
        out += [(f"|D_b| = {n}", {}, n) for n in (100, 200, 400)]
    if "generator" in which:
        alone = {"warp_search": 0, "pattern_search": False}  # one search, no others beside it
        for g in ("residual", "unet", "ia"):
            if g != base.generator:  # the ia generator has no residual form: it runs alone
                out.append((f"generator = {g}", {"generator": g, **(alone if g == "ia" else {})},
                            None))
        out.append((f"static pattern = {not base.static_pattern}",
                    {"static_pattern": not base.static_pattern}, None))
        k = base.warp_search or 4
        if base.warp_search or base.pattern_search:  # the searches apart
            out.append(("plain search only (no warp, no pattern search)", dict(alone), None))
        if base.warp_search and base.pattern_search:  # one of the two left out
            out.append(("no warp search", {"warp_search": 0}, None))
            out.append(("no pattern search", {"pattern_search": False}, None))
        if base.warp_search:
            out.append(("warp search from a zero field", {"warp_init": 0.0}, None))
        out.append((f"warp search only (a {k}×{k} field alone)",
                    {**alone, "warp_grid": k, "warp_only": True, "warp_through_mtr": True,
                     "static_pattern": False}, None))
        out.append(("pattern search only (P alone)",
                    {**alone, "pattern_only": True, "static_pattern": False}, None))
        out.append(("plain search with a warp branch through the MTR (session 9)",
                    {**alone, "warp_grid": k, "warp_through_mtr": True}, None))
        if not base.warp_search:
            out.append((f"plain + warp search (warp_search = {k})", {"warp_search": k}, None))
        if not base.pattern_search:
            out.append(("plain + pattern search", {"pattern_search": True}, None))
    if "mtr_norm" in which:
        other = "max" if base.mtr_norm == "percentile" else "percentile"
        out.append((f"MTR normalisation = {other}", {"mtr_norm": other}, None))
        out.append(("MTR map = per image", {"mtr_map": "per_image"}, None))
    return out


def _slug(label: str) -> str:
    """An ASCII file-name part for a variant label ("λ3 = 200" -> "lambda3-200")."""
    text = label.replace("λ", "lambda").replace("|D_b|", "benign-set").lower()
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in text).split()
    return "-".join(words)


GROUPS = ("fsrt", "mtr", "lambda3", "lambda1", "units", "select", "l1", "benign", "generator", "mtr_norm")


def run_ablation(task: str, attacks: list[str], n_benign: int, n_backdoored: int,
                 profile: str = "cpu", groups: list[str] | None = None,
                 cache_dir: str | None = None, out_dir: str = "results",
                 command: str = "", progress: bool = True, rescan: bool = False,
                 first_seed: int = 0, executor=None) -> dict:
    groups = groups or ["fsrt", "mtr", "lambda3", "benign"]
    rows = []
    if executor is not None:  # every variant's scans in one go
        executor.run(Zoo(cache_dir, progress, rescan), sum(
            (identification_work(task, attacks, n_benign, n_backdoored, profile, ["drmguard"],
                                 overrides=o, benign_limit=n, first_seed=first_seed)
             for _, o, n in variants(task, profile, groups)), Work()))
    for label, overrides, limit in variants(task, profile, groups):
        slug = _slug(label)
        rec = run_identification(task, attacks, n_benign, n_backdoored, profile, ["drmguard"],
                                 cache_dir, f"{out_dir}/ablation-runs", overrides=overrides,
                                 benign_limit=limit,
                                 name=f"ablation-{task}-{profile}-{slug}", command=command,
                                 progress=progress, rescan=rescan, first_seed=first_seed)
        for s in rec["summary"]:
            rows.append({"variant": label, "overrides": overrides, "benign_limit": limit, **s})
    record = {"provenance": provenance(command), "task": task, "profile": profile,
              "attacks": attacks, "n_benign": n_benign, "n_backdoored": n_backdoored,
              "first_seed": first_seed,
              "groups": groups, "rows": rows}
    md = (f"# DRMGuard ablations — {task}, profile {profile}\n\n{n_benign} benign + "
          f"{n_backdoored} backdoored models per attack ({', '.join(attacks)}); each row is one "
          "identification run on the same cached zoo.\n\n"
          + md_table(["variant", "attack", "TP", "FP", "FN", "TN", "accuracy", "ROC-AUC",
                      "estimate error (mean)"],
                     [[r["variant"], r["attack"], r["TP"], r["FP"], r["FN"], r["TN"],
                       r["accuracy"], r["roc_auc"], r.get("target_error_mean")] for r in rows]))
    write_results(out_dir, f"ablation-{task}-{profile}", record, md)
    return record
