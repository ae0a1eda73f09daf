"""Which strengths of a dense trigger are a *key, not damage* on benign models.

For each task and each attack strength in the grid, the trigger (at full strength, seeded as the
zoo's seed 0) is applied to the test split of benign zoo models (development seeds by default,
so the choice never looks at the tables' models) and scored as the attack tables score it
(``experiments.attack_table.trigger_on_model``): the outputs' variance ratio under the trigger
and the error on T(x) against the true labels relative to the clean error. A strength is a key
on a task when every benign model keeps a variance ratio ≥ 0.8 and an error ratio ≤ 1.5.
``dpix`` is the trigger's mean absolute change per pixel (its L1 cost per pixel).

Writes ``results/dev/key-strengths-<profile>.json`` and ``.md``::

    PYTHONPATH=src python benchmarks/key_strengths.py --cache DEV_CACHE [--seeds 100,101,102] [-q]

Benign models missing from the cache are trained (about 3.5 minutes each on the cpu profile).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

GRID = ([("blend", {"alpha": a}) for a in (0.05, 0.08, 0.1, 0.15, 0.2)]
        + [("sig", {"delta": round(d / 255, 6), "freq": f}) for f in (6, 3)
           for d in (5, 10, 15, 20)])


def label(name: str, opts: dict) -> str:
    if name == "sig":
        return f"sig Δ {opts['delta'] * 255:.0f}/255, f {opts['freq']}"
    return f"{name} " + ", ".join(f"{k} {v:g}" for k, v in opts.items())


def measure(cache: str, profile: str, seeds: list[int], tasks: list[str],
            quiet: bool = False) -> list[dict]:
    from drmguard.attacks import make_attack
    from drmguard.experiments.attack_table import is_key, trigger_on_model
    from drmguard.experiments.identification import experiment_task
    from drmguard.experiments.zoo import ModelSpec, Zoo

    zoo = Zoo(cache, progress=False)
    rows = []
    for task in tasks:
        t = experiment_task(task)
        for seed in seeds:
            spec = ModelSpec(task, profile, None, seed)
            model = zoo.model(spec)[0]
            x, y = zoo.splits(spec).test.tensors()
            for name, opts in GRID:
                attack = make_attack(name, y[0], task=task, image_size=x.shape[-1], seed=0,
                                     profile=profile, **opts)
                r = trigger_on_model(model, attack, x, y, t)
                rows.append({"task": task, "model": spec.label(), "attack": name,
                             "options": opts, "strength": label(name, opts),
                             "variance_ratio": r["variance_ratio"],
                             "error_ratio": r["error_ratio"], "key": is_key(r),
                             "dpix": float((attack.apply(x) - x).abs().mean())})
                if not quiet:
                    print(f"{spec.label()} {label(name, opts)}: variance ratio "
                          f"{r['variance_ratio']:.3f}, error ratio {r['error_ratio']:.3f}",
                          file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = {}
    for r in rows:
        s = out.setdefault((r["task"], r["strength"]), {
            "task": r["task"], "strength": r["strength"], "dpix": r["dpix"],
            "variance_ratio_min": 1e9, "error_ratio_max": 0.0, "key": True, "models": 0})
        s["variance_ratio_min"] = min(s["variance_ratio_min"], r["variance_ratio"])
        s["error_ratio_max"] = max(s["error_ratio_max"], r["error_ratio"])
        s["key"] = s["key"] and r["key"]
        s["models"] += 1
    return list(out.values())


def markdown(rec: dict) -> str:
    lines = [f"# Trigger strengths that are keys — profile {rec['profile']}", "",
             f"Benign models: seeds {', '.join(map(str, rec['seeds']))} per task. A strength is a "
             "key when every benign model keeps its outputs' variance ratio ≥ 0.8 and its error "
             "ratio ≤ 1.5 under the full trigger.", "",
             "| task | trigger | change per pixel | variance ratio (min) | error ratio (max) | key |",
             "|---|---|---|---|---|---|"]
    for s in rec["summary"]:
        lines.append(f"| {s['task']} | {s['strength']} | {s['dpix']:.4f} | "
                     f"{s['variance_ratio_min']:.3f} | {s['error_ratio_max']:.3f} | "
                     f"{'yes' if s['key'] else 'no'} |")
    p = rec["provenance"]
    lines += ["", f"Made by `{p['command']}` at commit {p['commit']} ({p['date']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="zoo cache with (or for) the benign models")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--tasks", default="gaze,headpose")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "dev"))
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-measurement lines")
    a = ap.parse_args(argv)
    from drmguard.experiments.results import provenance

    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = measure(a.cache, a.profile, seeds, a.tasks.split(","), a.quiet)
    rec = {"provenance": provenance("python benchmarks/key_strengths.py " + " ".join(
        sys.argv[1:] if argv is None else argv)), "profile": a.profile, "seeds": seeds,
        "summary": summary(rows), "models": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"key-strengths-{a.profile}"
    stem.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(rec))
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
