"""Cost of one DRMGuard reverse-engineering step relative to a bare training step.

Both are measured in the same run, on the same model and the same batch:

- bare: forward + L1 loss + backward of the regression model (training mode, parameter
  gradients), no optimiser step;
- DRMGuard: one :func:`drmguard.defenses.drmguard.reverse.search_step` — generator forward, MTR
  blend, model forward with features, Eq. 5, backward into the generator, Adam step.

Usage::

    python benchmarks/scan_step.py [--profile cpu] [--task gaze] [--repeats 30] [--out results/]

Writes ``scan_step_<profile>_<task>.json`` (median seconds of each, the ratio, the git commit,
the device and thread count). The aim is a ratio ≤ 2.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from drmguard.defenses.drmguard import default_config
from drmguard.defenses.drmguard import mtr as mtr_mod
from drmguard.defenses.drmguard.generator import build_generator
from drmguard.defenses.drmguard.reverse import (feature_angles, frozen, output_variance,
                                                search_step)
from drmguard.models.registry import build_model
from drmguard.models.split import RegressionModel
from drmguard.profiles import get_profile
from drmguard.tasks import get_task
from drmguard.utils import git_commit, resolve_device


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--task", default="gaze")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--channels-last", action="store_true",
                    help="model, generator and batch in channels-last memory format")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prof, task = get_profile(args.profile), get_task(args.task)
    cfg = default_config(args.profile, args.task)
    device = resolve_device(cfg.device)
    side = prof.size_for(args.task)
    net = build_model(prof.arch, task.dim, 3, **prof.arch_kwargs)
    model = RegressionModel(net, (side, side), 3, mean=[0.5] * 3, std=[0.25] * 3).to(device)
    x = torch.rand(cfg.batch_size, 3, side, side, device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    y = torch.randn(cfg.batch_size, task.dim, device=device) * 0.2

    def bare():
        model.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()

    model.train()
    timed(bare, args.warmup, device)
    t_bare = timed(bare, args.repeats, device)

    gen = build_generator(cfg, 3, (side, side)).to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    momentum = mtr_mod.MomentumMap(cfg.mtr_beta, per_image=cfg.mtr_map == "per_image")
    with frozen(model):
        h, out = model.forward_with_features(x)
        weight = model.head.weight.detach().float()
        theta_ref = feature_angles(h.float(), weight).detach()
        ref_var = output_variance(out.float()).detach()
        att = mtr_mod.attention_maps(model, x, cfg.batch_size, cfg)

        def step():
            search_step(model, gen, opt, momentum, x, att, theta_ref, ref_var, weight, cfg)

        timed(step, args.warmup, device)
        t_step = timed(step, args.repeats, device)
    bare_s, step_s = statistics.median(t_bare), statistics.median(t_step)
    result = {
        "benchmark": "scan_step", "profile": args.profile, "task": args.task,
        "arch": prof.arch, "image_size": side, "batch_size": cfg.batch_size,
        "generator": cfg.generator, "gen_width": cfg.gen_width,
        "bare_fwd_bwd_s": bare_s, "drmguard_step_s": step_s, "ratio": step_s / bare_s,
        "channels_last": args.channels_last, "repeats": args.repeats, "device": str(device),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "commit": git_commit(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_channels_last" if args.channels_last else ""
    path = out / f"scan_step_{args.profile}_{args.task}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
