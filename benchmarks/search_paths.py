"""Calibration aid: read DRMGuard scans that kept their checkpoints (``select`` other than
``final``) on development models, and tabulate what each collapse threshold c would decide if
the verdict read the whole search: R*(c) = the smallest held-out R among the checkpoints whose
collapse ratio is below c; flagged iff R*(c) < τ; ROC-AUC on the score −R*(c) (models that never
collapse below c rank last, by their lowest collapse ratio).

    python benchmarks/search_paths.py --cache .drmguard-cache --task gaze --first-seed 100 \\
        --out results/dev/search-paths-gaze-cpu [--match '{"warp_grid": 4}']

Writes JSON + Markdown (per model: R*(c) and the target-estimate error there; per attack and c:
AUC and the verdicts at each τ). No scan is run here: it reads the zoo cache.
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

import torch

from drmguard.experiments.identification import target_error
from drmguard.experiments.results import md_table, provenance, write_results
from drmguard.experiments.trigger_response import cheapest
from drmguard.metrics import detection_metrics
from drmguard.tasks import get_task

THRESHOLDS = (0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8)
TAUS = (0.005, 0.01, 0.02, 0.03, 0.05)


def r_star(checkpoints: list[dict], c: float) -> tuple[float | None, dict | None, float]:
    """(R*, its checkpoint, the lowest collapse ratio on the path)."""
    best = cheapest(checkpoints, None, c)
    return (best["R"] if best else None), best, min(ch["collapse_ratio"] for ch in checkpoints)


def load(cache: Path, task: str, first_seed: int, match: dict | None = None) -> list[dict]:
    """Every cached DRMGuard detection with checkpoints on a development model of ``task``
    whose settings agree with ``match`` (an option missing from an older record counts as its
    default)."""
    from drmguard.defenses.drmguard import DRMGuardConfig

    defaults, out = DRMGuardConfig().to_dict(), []
    for spec_file in sorted(cache.glob("models/*/spec.json")):
        spec = json.loads(spec_file.read_text())
        if spec["task"] != task or spec["seed"] < first_seed:
            continue
        key = spec_file.parent.name
        att = next(iter(sorted((cache / "runs" / key).glob("attack-metrics-*.json"))), None)
        metrics = json.loads(att.read_text()) if att else {}
        for det in sorted((cache / "runs" / key).glob("detect-drmguard-*.json")):
            d = json.loads(det.read_text())["details"]
            if any(d["config"].get(k, defaults.get(k)) != v for k, v in (match or {}).items()):
                continue
            if d.get("checkpoints"):
                out.append({"model": f"{task}/{spec['attack'] or 'benign'}/seed{spec['seed']}",
                            "attack": spec["attack"], "select": d["config"]["select"],
                            "checkpoints": d["checkpoints"], "AE": metrics.get("AE"),
                            "real_target": metrics.get("real_target"),
                            "reported": {k: d[k] for k in ("R", "collapse_ratio", "status")}})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=".drmguard-cache")
    ap.add_argument("--task", default="gaze")
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--out", default="results/dev/search-paths-gaze-cpu")
    ap.add_argument("--match", default="{}",
                    help='JSON of DRMGuard options the scans must have, e.g. \'{"warp_grid": 4}\'')
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    task = get_task(args.task)
    scans = load(Path(args.cache), args.task, args.first_seed, json.loads(args.match))
    if not scans:
        raise SystemExit("no scans with checkpoints in this cache")
    attacks = sorted({s["attack"] for s in scans if s["attack"]})
    per_model, summary = [], []
    for s in scans:
        row = {"model": s["model"], "AE": s["AE"], "reported": s["reported"]}
        for c in THRESHOLDS:
            r, ch, low = r_star(s["checkpoints"], c)
            row[f"R*@{c}"] = r
            row[f"error@{c}"] = (target_error(task, ch["estimate"], s["real_target"])
                                 if ch and s["real_target"] else None)
        row["lowest_collapse"] = min(ch["collapse_ratio"] for ch in s["checkpoints"])
        per_model.append(row)
    for a in attacks:
        sel = [s for s in scans if s["attack"] in (None, a)]
        labels = [s["attack"] is not None for s in sel]
        for c in THRESHOLDS:
            scores, rs = [], []
            for s in sel:
                r, _, low = r_star(s["checkpoints"], c)
                rs.append(r)
                scores.append(-r if r is not None else -1.0 - low)
            m = detection_metrics(labels, scores, [r is not None and r < 0.03 for r in rs])
            flags = {str(t): [sum(1 for r, lab in zip(rs, labels) if lab == bd and r is not None
                                  and r < t) for bd in (True, False)] for t in TAUS}
            summary.append({"attack": a, "c": c, "roc_auc": m["roc_auc"],
                            "flagged_backdoored_benign_by_tau": flags,
                            "n": [sum(labels), len(labels) - sum(labels)]})
    record = {"provenance": provenance("python benchmarks/search_paths.py " + " ".join(
        argv or [])), "task": args.task, "first_seed": args.first_seed,
        "thresholds": THRESHOLDS, "taus": TAUS, "summary": summary, "models": per_model}
    md = (f"# Search paths on development models — {args.task}\n\nEach DRMGuard scan kept its "
          "checkpoints (held-out D_b, every 20 steps). R*(c): the smallest R among the "
          "checkpoints whose collapse ratio is below c (– never). Flagged at τ: R*(c) < τ.\n\n"
          + md_table(["attack", "c", "ROC-AUC", *[f"flagged @τ={t} (bd / benign)" for t in TAUS]],
                     [[s["attack"], s["c"], s["roc_auc"],
                       *[f"{s['flagged_backdoored_benign_by_tau'][str(t)][0]}/{s['n'][0]} · "
                         f"{s['flagged_backdoored_benign_by_tau'][str(t)][1]}/{s['n'][1]}"
                         for t in TAUS]] for s in summary])
          + "\n\n## Per model\n\n"
          + md_table(["model", "AE", "lowest collapse", *[f"R*@{c}" for c in THRESHOLDS],
                      *[f"estimate error @{c}" for c in (0.25, 0.5)]],
                     [[r["model"], r["AE"], r["lowest_collapse"],
                       *[r[f"R*@{c}"] for c in THRESHOLDS],
                       r["error@0.25"], r["error@0.5"]] for r in per_model]))
    out = Path(args.out)
    write_results(out.parent, out.name, record, md)
    print(f"wrote {out}.md")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
