"""Stability of the verdicts: the same zoo scanned again with other detector seeds and other
torch thread counts.

A scan is a non-convex search; its end state can depend on the seed and, through the order of
float sums, on the number of threads. The reference is the identification table's own scans
(seed 0, the worker's threads); every variant rescans the same cached models with one seed and
thread count (a cache entry of its own), is summarised like an identification table
(``stability-runs/``), and the table counts, per model, the variants whose verdict differs
from the reference (flips).
"""

from __future__ import annotations

from .executor import Work
from .identification import identification_work, run_identification
from .results import md_table, provenance, write_results
from .zoo import Zoo


def variants(seeds: list[int], threads: list[int]) -> list[tuple[str, int, int | None]]:
    """(label, detector seed, torch threads): the reference (seed 0, the worker's threads),
    each extra seed at one thread, seed 0 at each extra thread count."""
    out: list[tuple[str, int, int | None]] = [("reference (seed 0)", 0, None)]
    out += [(f"seed {s}, 1 thread", int(s), 1) for s in seeds if int(s) != 0]
    out += [(f"seed 0, {t} thread{'' if int(t) == 1 else 's'}", 0, int(t)) for t in threads]
    return out


def _slug(label: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def flips(runs: list[dict], defense: str = "drmguard") -> list[dict]:
    """Per model: each variant's verdict and score (the reference first), which variants
    differ from the reference (``changed``) and how many (``flips``)."""
    by_model = [{r["model"]: r for r in run["models"] if r["defense"] == defense}
                for run in runs]
    rows = []
    for name, r in by_model[0].items():
        verdicts = [m.get(name, {}).get("flagged") for m in by_model]
        changed = [v is not None and v != verdicts[0] for v in verdicts]
        rows.append({"model": name, "attack": r["attack"], "implanted": r.get("implanted"),
                     "verdicts": verdicts, "scores": [m.get(name, {}).get("score")
                                                      for m in by_model],
                     "changed": changed, "flips": sum(changed)})
    return rows


def run_stability(task: str, attacks: list[str], n_benign: int, n_backdoored: int,
                  profile: str = "cpu", seeds: list[int] | None = None,
                  threads: list[int] | None = None, cache_dir: str | None = None,
                  out_dir: str = "results", command: str = "", progress: bool = True,
                  rescan: bool = False, first_seed: int = 0, executor=None) -> dict:
    """DRMGuard's identification on one zoo under every variant of :func:`variants`; writes
    ``stability-<task>-<profile>`` (flips per model and per variant) and each variant's
    identification table under ``stability-runs/``."""
    seeds = [1, 2] if seeds is None else seeds
    threads = [2] if threads is None else threads
    vs = variants(seeds, threads)
    if executor is not None:  # every variant's scans in one go
        executor.run(Zoo(cache_dir, progress, rescan), sum(
            (identification_work(task, attacks, n_benign, n_backdoored, profile, ["drmguard"],
                                 first_seed=first_seed, seed=s, threads=t)
             for _, s, t in vs), Work()))
    runs = [run_identification(task, attacks, n_benign, n_backdoored, profile, ["drmguard"],
                               cache_dir, f"{out_dir}/stability-runs",
                               name=f"stability-{task}-{profile}-{_slug(label)}",
                               command=command, progress=progress, rescan=rescan,
                               first_seed=first_seed, seed=s, threads=t)
            for label, s, t in vs]
    per_model = flips(runs)
    summary = [{"variant": label, "seed": s, "threads": t, **row,
                "flips": sum(m["changed"][i] for m in per_model
                             if row["attack"] in ("all", m["attack"]) or m["attack"] is None)}
               for i, ((label, s, t), run) in enumerate(zip(vs, runs)) for row in run["summary"]]
    record = {"provenance": provenance(command), "task": task, "profile": profile,
              "attacks": attacks, "n_benign": n_benign, "n_backdoored": n_backdoored,
              "first_seed": first_seed, "variants": [list(v) for v in vs],
              "summary": summary, "models": per_model,
              "total_flips": sum(m["flips"] for m in per_model)}
    write_results(out_dir, f"stability-{task}-{profile}", record, to_markdown(record))
    return record


def _verdict(v) -> str:
    return "–" if v is None else ("flagged" if v else "benign")


def to_markdown(rec: dict) -> str:
    labels = [v[0] for v in rec["variants"]]
    srows = [[s["variant"], s["attack"], s["TP"], s["FP"], s["FN"], s["TN"], s["accuracy"],
              s["roc_auc"], s["flips"]] for s in rec["summary"]]
    changed = [m for m in rec["models"] if m["flips"]]
    mrows = [[m["model"], m.get("implanted"), *[f"{_verdict(v)} ({sc:.4g})" if sc is not None
                                                 else _verdict(v)
                                                 for v, sc in zip(m["verdicts"], m["scores"])],
              m["flips"]] for m in changed]
    return (f"# Stability of DRMGuard's verdicts — {rec['task']}, profile {rec['profile']}\n\n"
            f"{rec['n_benign']} benign + {rec['n_backdoored']} backdoored models per attack "
            f"({', '.join(rec['attacks'])}), scanned once per variant; a flip is a model whose "
            f"verdict differs from the reference scan's. Models left out of a variant's counts "
            f"(attack not implanted) still count their flips.\n\n"
            f"**Flips over all variants: {rec['total_flips']}** "
            f"({len(changed)} of {len(rec['models'])} models).\n\n"
            + md_table(["variant", "attack", "TP", "FP", "FN", "TN", "accuracy", "ROC-AUC",
                        "flips vs reference"], srows)
            + "\n\n## Models whose verdict changed (score in brackets)\n\n"
            + (md_table(["model", "implanted", *labels, "flips"], mrows) if mrows
               else "None.\n"))
