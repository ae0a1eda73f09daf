"""Wall time of one DRMGuard scan and one Neural Cleanse scan (the original, per class) of a
cpu-profile digits classifier, on one core (issue 20's aim: a scan in at most 2 minutes on
the 2-core development machine).

The classifier is a BadNets digits model of the identification zoo (trained on first use and
cached under ``--cache``, default ``$DRMGUARD_CACHE``); the scans run on the zoo's D_b (180
images) with the profile's settings, torch on one thread. Each scan is timed once (``--repeats``
for more; the best counts) — a benchmark, not a timed test.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/scan_digits.py [--profile cpu] [--seed 0]

Writes ``results/scan_digits_cpu.json`` (wall and CPU seconds per scan, verdicts, the git
commit, the CPU and its load at the start and end). On a machine shared with other work the
wall time measures the contention; the CPU time of the scan's one thread is what it costs (≈ its
wall time on an idle core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from drmguard.defenses import get_detector  # noqa: E402
from drmguard.experiments.data import experiment_task  # noqa: E402
from drmguard.experiments.zoo import ModelSpec, Zoo  # noqa: E402
from drmguard.utils import git_commit  # noqa: E402

AIM_S = 120.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    zoo = Zoo(args.cache, progress=False)
    spec = ModelSpec("classification", args.profile, args.attack, args.seed)
    model, attack, _ = zoo.model(spec)
    benign = zoo.splits(spec).benign
    task = experiment_task("classification")
    record = {"benchmark": "scan_digits", "profile": args.profile, "model": spec.label(),
              "n_benign": len(benign), "image_size": list(benign.image_size), "aim_s": AIM_S,
              "repeats": args.repeats, "target_class": int(attack.target.argmax()),
              "scans": {}}
    for name in ("drmguard", "neural_cleanse"):
        det = get_detector(name, args.profile, "classification")
        times, cpu, d = [], [], None
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            d = det.detect(model, benign, task, seed=0, progress=False)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best, best_cpu = min(times), min(cpu)
        record["scans"][name] = {"seconds": round(best, 2), "cpu_seconds": round(best_cpu, 2),
                                 "all_seconds": [round(t, 2) for t in times],
                                 "all_cpu_seconds": [round(t, 2) for t in cpu],
                                 "within_aim_wall": best <= AIM_S,
                                 "within_aim_cpu": best_cpu <= AIM_S, "flagged": d.backdoored,
                                 "estimated_class": d.details.get("target_class")}
        print(f"{name}: {best:.1f} s wall, {best_cpu:.1f} s CPU, flagged {d.backdoored}, class "
              f"{d.details.get('target_class')}", flush=True)
    record.update({"cpu": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "load_average_1min_at_start": load,
                   "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg")
                   else None,
                   "threads": torch.get_num_threads(), "commit": git_commit()})
    out = Path(args.out) / f"scan_digits_{args.profile}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
