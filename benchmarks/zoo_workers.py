"""Wall time of one zoo experiment with 1 and with N local workers.

The same identification zoo — ``--benign`` benign and ``--backdoored`` BadNets models, each
trained and scanned by DRMGuard — is computed from scratch twice, each time in a fresh cache
directory: once one item after another (``--workers 1``, the sequential path) and once with
``--parallel`` worker processes (``cores // N`` torch threads each). The sequential run keeps
torch's default thread count (all cores: what ``--workers 1`` does) unless
``--sequential-threads`` says otherwise. ``same_results`` records whether the two tables are
equal (timing fields aside): torch's CPU kernels sum in an order that depends on the thread
count, so the numbers are bit-identical only at equal thread counts
(``--sequential-threads 1`` with 2 workers on 2 cores).

Usage::

    python benchmarks/zoo_workers.py [--profile cpu] [--task gaze] [--benign 4] \
        [--backdoored 4] [--parallel 2] [--out results/zoo_workers_cpu.json]

Writes the commit, both wall times and the speed-up (sequential / parallel). The aim is a
speed-up ≥ 1.7 with 2 workers on 2 cores. At the ``cpu`` profile this takes more than an hour
on 2 idle cores; ``--profile tiny`` checks the script in a minute or two.

It also says where the speed-up goes, from the times each cache recorded (every model's
training seconds, every detection's wall seconds): ``task_seconds`` (their sum per run),
``parallel_efficiency`` (the parallel run's task seconds / (workers × its wall time): 1.0 when
the workers never wait) and ``thread_scaling`` (how much faster the same tasks ran with the
sequential run's threads than with a worker's: torch's own intra-op speed-up). The speed-up is
then about workers × efficiency / thread scaling (``speedup_predicted``; the sequential run's
small overhead outside its tasks aside): where torch already keeps every core busy, worker
processes have little left to win. ``--reanalyse`` adds these
fields to an earlier record from its ``--work-dir`` without running anything again.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from drmguard.experiments.executor import Executor, cores, threads_per_worker
from drmguard.experiments.identification import run_identification
from drmguard.experiments.results import comparable
from drmguard.utils import git_commit


def task_seconds(cache: Path) -> float:
    """Seconds the tasks of one run took, as its cache recorded them: every model's training
    and every detection."""
    train = sum(json.loads(f.read_text())["history"]["seconds"]
                for f in cache.glob("models/*/model.json"))
    detect = sum(json.loads(f.read_text()).get("wall_seconds", 0.0)
                 for f in cache.glob("runs/*/detect-*.json"))
    return train + detect


def analysis(work: Path, seconds: dict[int, float], parallel: int) -> dict:
    """Where the speed-up goes (see the module docstring)."""
    tasks = {n: task_seconds(work / f"workers-{n}" / "cache") for n in (1, parallel)}
    efficiency = tasks[parallel] / (parallel * seconds[parallel])
    scaling = tasks[parallel] / tasks[1]
    return {"task_seconds": {f"workers_{n}": t for n, t in tasks.items()},
            "parallel_efficiency": efficiency, "thread_scaling": scaling,
            "speedup_predicted": parallel * efficiency / scaling}


def reanalyse(path: Path, work: Path) -> dict:
    """An earlier record with :func:`analysis` added from the caches it left in ``work``."""
    record = json.loads(path.read_text())
    seconds = {int(k.split("_")[1]): v for k, v in record["seconds"].items()}
    parallel = max(seconds)
    record.update(analysis(work, seconds, parallel))
    record["analysed"] = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--task", default="gaze")
    ap.add_argument("--work-dir", default=None,
                    help="where the two fresh caches go (default: a temporary directory)")
    ap.add_argument("--out", default=None,
                    help="result JSON (default: results/zoo_workers_<profile>.json)")
    ap.add_argument("--benign", type=int, default=4)
    ap.add_argument("--backdoored", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=2, help="workers of the parallel run")
    ap.add_argument("--sequential-threads", type=int, default=0,
                    help="torch threads of the sequential run (0: torch's default)")
    ap.add_argument("--reanalyse", action="store_true",
                    help="add the analysis to the record at --out from the caches in --work-dir")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out or f"results/zoo_workers_{args.profile}.json")
    if args.reanalyse:
        if not args.work_dir or not out.exists():
            sys.exit("zoo_workers: --reanalyse needs --work-dir and an existing --out record")
        rec = reanalyse(out, Path(args.work_dir))
        print(_summary(rec))
        return rec
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="zoo-workers-"))
    if args.work_dir and any(work.glob("*")):
        sys.exit(f"zoo_workers: --work-dir {work} is not empty (the caches must be fresh)")

    if args.sequential_threads:
        torch.set_num_threads(args.sequential_threads)
    threads = {1: torch.get_num_threads(), args.parallel: threads_per_worker(args.parallel)}
    seconds, tables = {}, {}
    for n in (1, args.parallel):
        base = work / f"workers-{n}"
        t0 = time.perf_counter()
        rec = run_identification(args.task, ["badnets"], args.benign, args.backdoored,
                                 args.profile, ["drmguard"], str(base / "cache"),
                                 str(base / "results"), progress=not args.quiet,
                                 executor=Executor(n, progress=not args.quiet))
        seconds[n] = time.perf_counter() - t0
        tables[n] = comparable(rec)
        print(f"{n} worker(s): {seconds[n]:.1f} s", flush=True)
    where = analysis(work, seconds, args.parallel)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)

    record = {
        "benchmark": "zoo_workers", "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": args.profile, "task": args.task,
        "zoo": {"benign": args.benign, "backdoored": args.backdoored, "attack": "badnets",
                "defense": "drmguard"},
        "cores": cores(), "torch": torch.__version__, "machine": platform.machine(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seconds": {f"workers_{n}": s for n, s in seconds.items()},
        "torch_threads": {f"workers_{n}": t for n, t in threads.items()},
        "speedup": seconds[1] / seconds[args.parallel],
        "same_results": tables[1] == tables[args.parallel],
        "goal": "speedup >= 1.7 with 2 workers on 2 cores",
        **where,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{_summary(record)} (same results: {record['same_results']}); wrote {out}")
    return record


def _summary(record: dict) -> str:
    return (f"speed-up {record['speedup']:.2f}× (predicted {record['speedup_predicted']:.2f}×: "
            f"workers busy {record['parallel_efficiency']:.0%} of the time, torch's own "
            f"thread scaling {record['thread_scaling']:.2f}×)")


if __name__ == "__main__":
    main()
