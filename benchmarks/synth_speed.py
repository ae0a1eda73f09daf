"""Time to generate a profile's whole synthetic data set, both tasks, on one core.

Generation runs in this process with torch/BLAS threads set to one (numpy's elementwise work is
single-threaded anyway); the best of ``--repeats`` runs counts. The aim (issue 17): the cpu
profile's data set (6,000 images at 32 px, 30 subjects) in at most 15 s per task.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/synth_speed.py [--profile cpu] [--repeats 3]

Writes ``results/synth_speed.json`` (seconds per task, images per second, the git commit,
``SYNTHETIC_VERSION``, the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from drmguard.data.synthetic import SYNTHETIC_VERSION, synth_gaze, synth_headpose  # noqa: E402
from drmguard.profiles import get_profile  # noqa: E402
from drmguard.utils import git_commit  # noqa: E402

AIM_S = 15.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    record = {"benchmark": "synth_speed", "profile": prof.name, "n": prof.n_samples,
              "subjects": prof.subjects, "synthetic_version": SYNTHETIC_VERSION,
              "aim_s": AIM_S, "repeats": args.repeats, "tasks": {}}
    for task, gen in (("gaze", synth_gaze), ("headpose", synth_headpose)):
        size = prof.size_for(task)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            gen(prof.n_samples, size=size, subjects=prof.subjects, seed=0)
            times.append(time.perf_counter() - t0)
        best = min(times)
        record["tasks"][task] = {"size": size, "seconds": round(best, 3),
                                 "all_seconds": [round(t, 3) for t in times],
                                 "images_per_s": round(prof.n_samples / best, 1),
                                 "within_aim": best <= AIM_S}
        print(f"{task}: {prof.n_samples} images at {size} px in {best:.2f} s")
    record.update({"cpu": platform.processor() or platform.machine(),
                   "threads": os.environ.get("OMP_NUM_THREADS"), "commit": git_commit()})
    out = Path(args.out) / "synth_speed.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
