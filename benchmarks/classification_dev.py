"""Development runs of DRMGuard on digits classifiers (seeds 100-101; issue 20): the
identification experiment on 2 benign + 2 models per attack with DRMGuard overrides.

Usage (the records in results/dev/classification/ were made so)::

    PYTHONPATH=src python benchmarks/classification_dev.py 10000,3000 select=cheapest_collapse

Arguments: comma-separated lambda1 values, then KEY=VALUE DRMGuard options (JSON values).
Cache: /work/cls-cache; output: /work/cls-out (edit to taste).
"""
import sys, torch, json
torch.set_num_threads(1)
from drmguard.experiments.identification import run_identification
for l1 in [float(v) for v in sys.argv[1].split(',')]:
    extra = dict(kv.split('=') for kv in sys.argv[2:])
    ov = {"lambda1": l1, **{k: json.loads(v) if v[0] in "0123456789tf" else v for k, v in extra.items()}}
    tag = "-".join(f"{k}{v}" for k, v in ov.items())
    rec = run_identification("classification", ["badnets", "blend", "wanet"], 2, 2, "cpu", ["drmguard"],
                             "/work/cls-cache", "/work/cls-out", overrides={"drmguard": ov},
                             name=f"dev-{tag}", progress=False, first_seed=100,
                             command="python /tmp/dev_l1.py " + " ".join(sys.argv[1:]))
    for r in rec["models"]:
        d = r["details"]
        print(tag, r["model"], r["flagged"], round(r["score"], 4), d.get("target_class"), r.get("target_class"), round(d["R"], 4), round(d["collapse_ratio"], 4), flush=True)
