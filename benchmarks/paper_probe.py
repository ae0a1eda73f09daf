"""A short probe of the ``paper`` profile on one GPU: what a paper-scale zoo would cost, and
whether a WaNet model at the paper's size is flagged.

Parts, each timed and written to the JSON as soon as it ends (so a run cut short still reports):

1. data: synthetic images at the profile's size (224 px gaze, 112 px head pose), split by subject;
2. a WaNet model (the paper's s = 1, k = side/8) and a benign model, trained with the paper
   profile's optimiser for ``--wanet-steps`` / ``--benign-steps`` (fewer than the profile's
   10,000 / 5,000 so that both fit a short lease; the JSON keeps both numbers);
3. the real trigger's cost R on D_b (the DRMGuard statistic) and the attack's AE / RE;
4. a DRMGuard scan of each model with the ``paper`` defaults (2,000 search steps).

Seconds per training step and per scan give the cost of the full profile (printed as
``paper_zoo_estimate``). Usage (GPU)::

    python benchmarks/paper_probe.py [--task gaze] [--n 4000] [--budget-s 420] [--out results/]

Writes ``paper_probe_<task>.json``. Not a test: one model of each kind, reduced training, so a
verdict here is a hint, not a measurement of accuracy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from drmguard.attacks import attack_train_config, make_attack
from drmguard.data.base import split_dataset
from drmguard.data.synthetic import synth_gaze, synth_headpose
from drmguard.defenses.base import get_detector
from drmguard.defenses.drmguard.identify import r_score
from drmguard.experiments.data import SPLIT_RATIOS
from drmguard.experiments.zoo import draw_target
from drmguard.metrics import attack_metrics
from drmguard.profiles import get_profile
from drmguard.tasks import get_task
from drmguard.training import evaluate, train_regressor
from drmguard.utils import git_commit, resolve_device


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="gaze", choices=["gaze", "headpose"])
    ap.add_argument("--n", type=int, default=4000, help="synthetic images (all splits)")
    ap.add_argument("--wanet-steps", type=int, default=2000)
    ap.add_argument("--benign-steps", type=int, default=1000)
    ap.add_argument("--scan-steps", type=int, default=0, help="0: the paper profile's")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip a part once this much wall time has passed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default="", help="commit to record (default: git's)")
    ap.add_argument("--quiet", "-q", action="store_true")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    prof, task = get_profile("paper"), get_task(args.task)
    side = prof.size_for(args.task)
    device = resolve_device("auto")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"paper_probe_{args.task}.json"
    rec = {"benchmark": "paper_probe", "task": args.task, "arch": prof.arch, "image_size": side,
           "n": args.n, "device": str(device),
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "commit": args.commit or git_commit(), "parts": {}, "skipped": []}

    def save(name: str, value: dict, t0: float) -> None:
        value["seconds"] = round(time.perf_counter() - t0, 2)
        rec["parts"][name] = value
        rec["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        path.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"[{rec['elapsed_s']:7.1f}s] {name}: {json.dumps(value)}", flush=True)

    def over_budget(name: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            rec["skipped"].append(name)
            path.write_text(json.dumps(rec, indent=2) + "\n")
            return True
        return False

    t0 = time.perf_counter()
    maker = synth_gaze if args.task == "gaze" else synth_headpose
    data = maker(args.n, size=side, subjects=prof.subjects, seed=args.seed)
    splits = split_dataset(data, SPLIT_RATIOS, by_subject=True, seed=args.seed)
    save("data", {"train": len(splits.train), "benign": len(splits.benign),
                  "test": len(splits.test)}, t0)

    target = draw_target(splits.train.targets, args.seed, 1)[0]
    attack = make_attack("wanet", target, task=args.task, image_size=splits.train.image_size,
                         channels=splits.train.channels, seed=args.seed, profile="paper")
    xb, _ = splits.benign.tensors(range(len(splits.benign)))
    d = (attack.apply(xb) - xb).abs()
    rec["real_trigger_R"] = r_score(d.flatten(1).sum(1), xb.flatten(1).sum(1))
    rec["attack_options"] = dict(attack.options)

    cfg_full = attack_train_config("wanet", "paper", args.task, args.seed)
    cfg_benign_full = prof.train_config(args.task, args.seed)
    rec["profile_steps"] = {"wanet": cfg_full.steps, "benign": cfg_benign_full.steps}
    det = get_detector("drmguard", "paper", args.task,
                       **({"steps": args.scan_steps} if args.scan_steps else {}))
    for kind, steps in [("wanet", args.wanet_steps), ("benign", args.benign_steps)]:
        if over_budget(f"train_{kind}"):
            continue
        t0 = time.perf_counter()
        if kind == "wanet":
            model, meta = attack.train_backdoored(splits.train, task, prof.arch,
                                                  replace(cfg_full, steps=steps),
                                                  progress=not args.quiet)
            m = attack_metrics(model, attack, splits.test, task)
            row = {k: m[k] for k in ("RE", "AE", "DAE")}
        else:
            model, meta = train_regressor(splits.train, task, prof.arch,
                                          replace(cfg_benign_full, steps=steps),
                                          progress=not args.quiet)
            row = {"RE": evaluate(model, splits.test, task)["error"]}
        hist = meta["history"]
        row.update(steps=steps, train_s=round(hist["seconds"], 2),
                   s_per_step=round(hist["seconds"] / steps, 5), final_loss=hist["final_loss"])
        save(f"train_{kind}", row, t0)

        if over_budget(f"scan_{kind}"):
            continue
        t0 = time.perf_counter()
        r = det.detect(model, splits.benign, task, seed=args.seed, progress=not args.quiet)
        dd = r.details
        save(f"scan_{kind}", {"flagged": r.backdoored, "score": r.score, "R": dd.get("R"),
                              "collapse": dd.get("collapse_ratio"), "status": dd.get("status"),
                              "target_estimate": r.target_estimate,
                              "target": target if kind == "wanet" else None,
                              "scan_s": round(r.seconds, 2)}, t0)

    # What the full profile would take on this device, from the measured rates.
    est = {}
    p = rec["parts"]
    if "train_wanet" in p:
        est["train_wanet_full_min"] = round(p["train_wanet"]["s_per_step"] * cfg_full.steps / 60, 1)
    if "train_benign" in p:
        est["train_benign_full_min"] = round(
            p["train_benign"]["s_per_step"] * cfg_benign_full.steps / 60, 1)
    scans = [p[k]["scan_s"] for k in ("scan_wanet", "scan_benign") if k in p]
    if scans:
        est["scan_min"] = round(sum(scans) / len(scans) / 60, 2)
    if len(est) == 3:  # a 10 + 10 WaNet identification zoo
        est["zoo_10_10_wanet_hours"] = round(
            (10 * est["train_wanet_full_min"] + 10 * est["train_benign_full_min"]
             + 20 * est["scan_min"]) / 60, 2)
    rec["paper_zoo_estimate"] = est
    rec["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    path.write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return rec


if __name__ == "__main__":
    main()
