"""Wall time of whole scans of one zoo model: DRMGuard (and, for classifiers, the original
Neural Cleanse) with the profile's settings — the aim is at most 2 minutes per scan at the cpu
profile on the 2-core development machine (issues 16 and 20).

The model is one of the identification zoo (trained on first use and cached under ``--cache``,
default ``$DRMGUARD_CACHE``); the scans run on the zoo's D_b with torch on ``--threads``
threads. Each scan is timed once (``--repeats`` for more; the best counts) — a benchmark, not a
timed test. Several models (``--attacks benign,badnets``) give the spread between a search
that collapses early and one that does not (the time does not depend on it: every search runs
its full schedule).

Usage::

    PYTHONPATH=src python benchmarks/scan_time.py --task gaze [--attacks benign,badnets] \
        [--threads 2] [--profile cpu] [--seed 0]
    PYTHONPATH=src python benchmarks/scan_time.py --task classification --threads 1 \
        --attacks badnets --defenses drmguard,neural_cleanse

Writes ``results/scan_time_<task>_<profile>.json`` (``scan_digits_<profile>.json`` for
classifiers, its earlier name): wall and CPU seconds per scan, the search's own split, verdicts,
the git commit, the CPU and its load at the start and end. On a machine shared with other work
the wall time measures the contention; the load averages say whether the cores were idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from drmguard.defenses import get_detector
from drmguard.experiments.data import experiment_task
from drmguard.experiments.zoo import ModelSpec, Zoo
from drmguard.utils import git_commit

AIM_S = 120.0


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (a scan's searches may run in
    processes of their own, drmguard.defenses.drmguard.scan.search_workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="gaze")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attacks", default="benign,badnets",
                    help="comma-separated; benign: a benign model")
    ap.add_argument("--defenses", default="drmguard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    zoo = Zoo(args.cache, progress=False)
    task = experiment_task(args.task)
    record = {"benchmark": "scan_time", "task": args.task, "profile": args.profile,
              "aim_s": AIM_S, "repeats": args.repeats, "scans": []}
    for attack_name in args.attacks.split(","):
        spec = ModelSpec(args.task, args.profile, None if attack_name == "benign" else attack_name,
                         args.seed)
        model, attack, _ = zoo.model(spec)
        benign = zoo.splits(spec).benign
        for name in args.defenses.split(","):
            det = get_detector(name, args.profile, args.task)
            times, cpu, d = [], [], None
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), cpu_seconds()
                d = det.detect(model, benign, task, seed=0, progress=False)
                times.append(time.perf_counter() - t0)
                cpu.append(cpu_seconds() - c0)
            best, best_cpu = min(times), min(cpu)
            row = {"model": spec.label(), "defense": name, "n_benign": len(benign),
                   "image_size": list(benign.image_size), "seconds": round(best, 2),
                   "cpu_seconds": round(best_cpu, 2),
                   "all_seconds": [round(t, 2) for t in times],
                   "within_aim": best <= AIM_S, "flagged": d.backdoored,
                   "searches": [{k: r.get(k) for k in ("warp_grid", "R", "collapse_ratio")}
                                for r in d.details.get("restarts", [])],
                   "split_seconds": {k: round(v, 2) for k, v in
                                     (d.details.get("timings") or {}).items()}}
            if task.is_classification:
                row["target_class"] = int(attack.target.argmax()) if attack else None
                row["estimated_class"] = d.details.get("target_class")
            record["scans"].append(row)
            print(f"{spec.label()} {name}: {best:.1f} s wall, {best_cpu:.1f} s CPU, flagged "
                  f"{d.backdoored}", flush=True)
    record.update({"cpu": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "load_average_1min_at_start": load,
                   "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg")
                   else None,
                   "threads": torch.get_num_threads(), "commit": git_commit()})
    stem = "scan_digits" if task.is_classification else f"scan_time_{args.task}"
    out = Path(args.out) / f"{stem}_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
