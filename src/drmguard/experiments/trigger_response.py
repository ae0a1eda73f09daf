"""Trigger response: what the cheapest *real* route to a collapse of the outputs costs.

DRMGuard's search looks for a cheap input perturbation that collapses a model's outputs. Whether
it can find a backdoor depends on what the backdoor offers: how far the outputs collapse, and at
what price in R and in the search objective, when the model sees *part* of its real trigger. This
experiment measures that directly on zoo models, with no search at all. For each backdoored model
and each strength a ∈ ``STRENGTHS`` it applies three routes of the attack's own trigger T to D_b:

- ``fade``: the cross-fade x + a·(T(x) − x) (a fainter patch, a weaker blend);
- ``strength``: :meth:`Attack.weakened` — for warps the displacement scaled (s → a·s); for
  additive triggers the same as ``fade``;
- ``mtr``: the ``strength`` route passed through the scan's MTR mask, x̃ = M ⊙ x + (1 − M) ⊙ T_a(x),
  M the mean normalised attention over D_b (the fixed point of the scan's running map): what the
  scan's generator pays (its L1 term is on G(x) − x = T_a(x) − x) and what the model sees.

and records R, the mean change per pixel, the collapse ratio, RAV, the target estimate's error to
the attack's real target, and the scan objective (Eq. 5 at the full L1 weight, over all of D_b),
to compare with the objective of the identity (a = 0). Benign models get the same routes with the
trigger of a backdoored model of the same attack (benign seed i with backdoored seed i): the
control, i.e. how far an unbackdoored model's outputs collapse under the same perturbation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..defenses.drmguard.config import default_config
from ..tasks import get_task
from ..utils import progress_bar
from .identification import attack_record, model_specs, target_error
from .results import md_table, provenance, write_results
from .zoo import ModelSpec, Zoo

STRENGTHS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
FAMILIES = ("fade", "strength", "mtr")
COLLAPSE = 0.25  # the collapse threshold of the identification rule (docs/method.md)


class _FixedRoute:
    """A perturbation x -> (T_a(x), x̃) in the shape of a reversed trigger (``generate``), so
    that :func:`~drmguard.defenses.drmguard.identify.evaluate_trigger` measures it exactly as a
    scan measures its own trigger."""

    def __init__(self, fn, mask: torch.Tensor | None = None):
        self.fn, self.mask = fn, mask

    def generate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            gx = self.fn(x).clamp(0, 1)
            xt = gx if self.mask is None else self.mask * x + (1 - self.mask) * gx
        return gx, xt


def route(attack, family: str, strength: float, mask: torch.Tensor | None = None,
          index: int = 0) -> _FixedRoute:
    """One perturbation of the response curve (see the module docstring)."""
    a = float(strength)
    if family == "fade":
        return _FixedRoute(lambda x: x + a * (attack.apply_for(x, index) - x))
    weak = attack.weakened(a, index)
    return _FixedRoute(weak, mask if family == "mtr" else None)


def response_curve(model, attack, benign, task, cfg, real_target=None,
                   strengths=STRENGTHS, families=FAMILIES) -> list[dict]:
    """Rows {family, strength, R, change per pixel, collapse, rav, objective, target error} of
    ``attack``'s routes on ``model`` over the benign set (the model is not modified)."""
    from ..defenses.drmguard.identify import evaluate_trigger
    from ..defenses.drmguard.reverse import BenignImages, frozen, precompute_benign

    rows = []
    with frozen(model):
        images = BenignImages(benign.images, torch.device("cpu"))
        bench = precompute_benign(model, images, cfg)
        mask = bench["attention"].mean(0)[None, None] if bench["attention"] is not None else None
        for family in families:
            for a in strengths:
                ev = evaluate_trigger(model, route(attack, family, a, mask), images, bench, cfg)
                rows.append({"family": family, "strength": a, "R": ev["R"],
                             "change_per_pixel": ev["mean_abs_change_per_pixel"],
                             "collapse_ratio": ev["collapse_ratio"], "rav": ev["rav"],
                             "objective": ev["objective"]["loss"],
                             "target_estimate": ev["target_estimate"],
                             "target_error": target_error(task, ev["target_estimate"],
                                                          real_target)})
    return rows


def cheapest(rows: list[dict], family: str | None, threshold: float = COLLAPSE) -> dict | None:
    """The row (of ``family``; None: any) with the smallest R whose collapse ratio is below
    ``threshold`` — of a response curve, or of a scan's checkpoints."""
    ok = [r for r in rows if family in (None, r.get("family")) and r["collapse_ratio"] < threshold]
    return min(ok, key=lambda r: r["R"]) if ok else None


def lowest_objective(rows: list[dict], family: str) -> float:
    """The lowest scan objective along the route, the identity (a = 0) excluded: above the
    identity's objective, no state of the route is one a search would prefer to doing nothing."""
    return min(r["objective"] for r in rows if r["family"] == family and r["strength"] > 0)


def collapse_at(rows: list[dict], family: str, r_budget: float) -> float | None:
    """The collapse ratio the route reaches at R = ``r_budget`` (linear interpolation along the
    curve; None when the route's R never reaches the budget)."""
    pts = sorted((r["R"], r["collapse_ratio"]) for r in rows if r["family"] == family)
    for (r0, c0), (r1, c1) in zip(pts, pts[1:]):
        if r0 <= r_budget <= r1:
            return c0 if r1 == r0 else c0 + (c1 - c0) * (r_budget - r0) / (r1 - r0)
    return None


def run_trigger_response(task: str, attacks: list[str], n_benign: int, n_backdoored: int,
                         profile: str = "cpu", first_seed: int = 0,
                         cache_dir: str = ".drmguard-cache", out_dir: str = "results",
                         name: str | None = None, command: str = "", progress: bool = True,
                         rescan: bool = False, budgets=(0.005, 0.01, 0.02, 0.03),
                         executor=None, attack_options: dict | None = None) -> dict:
    """The trigger-response table (per attack: backdoored models and benign controls); an
    :class:`~.executor.Executor` trains the zoo's models in parallel first (the measurement
    itself is a few forward passes per model)."""
    zoo = Zoo(cache_dir, progress, rescan)
    t = get_task(task)
    cfg = default_config(profile, task)
    specs = model_specs(task, profile, attacks, n_benign, n_backdoored,
                        attack_options=attack_options, first_seed=first_seed)
    if executor is not None:
        from .executor import Work

        executor.run(zoo, Work(specs, []))
    benign = [s for s in specs if s.attack is None]
    records = []
    bar = progress_bar(total=len(specs) - len(benign) + len(benign) * len(attacks),
                       desc="trigger response", enabled=progress)
    for a in attacks:
        backdoored = [s for s in specs if s.attack == a]
        for i, spec in enumerate(backdoored + benign):
            source = spec if spec.attack else backdoored[i % len(backdoored)]
            src_model, attack, src_meta = zoo.model(source)
            att = attack_record(zoo, source, src_model, attack, src_meta)
            model = src_model if spec is source else zoo.model(spec)[0]
            real = att.get("real_target")  # benign controls: the distance to the same target
            config = {"trigger_of": source.key(), "strengths": list(STRENGTHS),
                      "families": list(FAMILIES), "drmguard": cfg.digest()}
            rec = zoo.cached_run(spec, "diagnose", "trigger-response", config, lambda: {
                "rows": response_curve(model, attack, zoo.splits(spec).benign, t, cfg, real)})
            records.append({"model": spec.label(), "attack": a, "backdoored": spec.attack is not None,
                            "trigger_of": source.label(),
                            **({k: att.get(k) for k in ("RE", "AE", "DAE")} if spec.attack
                               else {"RE": None, "AE": None, "DAE": None}),
                            "rows": rec["rows"], "code": rec.get("code")})
            bar.update(1)
    bar.close()
    identity = cfg.lambda1 + cfg.lambda3  # the objective of the untouched input (out = rf = 1)
    summary = summarise(records, attacks, budgets)
    name = name or f"trigger-response-{task}-{profile}"
    record = {"provenance": provenance(command), "task": task, "profile": profile,
              "attacks": attacks, "n_benign": n_benign, "n_backdoored": n_backdoored,
              "first_seed": first_seed, "attack_options": attack_options or {},
              "strengths": list(STRENGTHS), "families": list(FAMILIES),
              "budgets": list(budgets), "collapse_threshold": COLLAPSE,
              "identity_objective": identity, "tau": cfg.tau,
              "l1_cap_per_pixel": identity / cfg.l1_weight, "summary": summary,
              "models": records}
    write_results(out_dir, name, record, to_markdown(record))
    plot(record, f"{out_dir}/{name}.png")
    return record


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarise(records: list[dict], attacks: list[str], budgets) -> list[dict]:
    """Per attack, family and group (backdoored / benign control): how many models reach a
    collapse at all, the median R of the cheapest collapse, the median collapse at each R budget,
    and the median lowest objective along the route."""
    out = []
    for a in attacks:
        for family in FAMILIES:
            for bd in (True, False):
                sel = [r for r in records if r["attack"] == a and r["backdoored"] == bd]
                if not sel:
                    continue
                best = [cheapest(r["rows"], family) for r in sel]
                objs = [lowest_objective(r["rows"], family) for r in sel]
                out.append({
                    "attack": a, "family": family, "group": "backdoored" if bd else "benign",
                    "n": len(sel), "n_collapsed": sum(b is not None for b in best),
                    "cheapest_R": _median([b["R"] if b else None for b in best]),
                    "cheapest_change_per_pixel": _median(
                        [b["change_per_pixel"] if b else None for b in best]),
                    "cheapest_target_error": _median(
                        [b["target_error"] if b else None for b in best]),
                    "collapse_at": {str(r): _median([collapse_at(x["rows"], family, r)
                                                     for x in sel]) for r in budgets},
                    "min_objective": _median(objs)})
    return out


def to_markdown(rec: dict) -> str:
    budgets = rec["budgets"]
    head = (f"# Trigger response — {rec['task']}, profile {rec['profile']}\n\n"
            f"{rec['n_backdoored']} backdoored models per attack (seeds {rec['first_seed']}…"
            + (f"; attack options {rec['attack_options']}" if rec.get("attack_options") else "")
            + f") and "
            f"{rec['n_benign']} benign controls; each model's benign set D_b; no search. Routes "
            "of the attack's own trigger T at strength a: *fade* x + a·(T(x) − x); *strength* "
            "the trigger made weaker (warps: s → a·s; otherwise = fade); *mtr* the strength route "
            "through the scan's MTR mask. Benign controls get the same routes with the trigger "
            "of a backdoored model of the same attack.\n\n"
            f"The identity's objective is {rec['identity_objective']:g} (λ1 + λ3); a full "
            f"collapse is worth at most that, so at the full L1 weight no route changing more "
            f"than {rec['l1_cap_per_pixel']:.4f} per pixel can beat the identity. τ = "
            f"{rec['tau']:g}; collapse threshold {rec['collapse_threshold']:g}.\n\n")
    rows = [[s["attack"], s["family"], s["group"], f"{s['n_collapsed']}/{s['n']}",
             s["cheapest_R"], s["cheapest_change_per_pixel"], s["cheapest_target_error"],
             *[s["collapse_at"][str(b)] for b in budgets], s["min_objective"]]
            for s in rec["summary"]]
    table = md_table(["attack", "route", "models", "collapse < 0.25", "cheapest R",
                      "change/pixel", "estimate error", *[f"collapse @ R={b:g}" for b in budgets],
                      "lowest objective (a > 0)"], rows)
    per = []
    for r in rec["models"]:
        for family in FAMILIES:
            best = cheapest(r["rows"], family)
            full = next(x for x in r["rows"] if x["family"] == family and x["strength"] == 1.0)
            per.append([r["model"], r["trigger_of"] if not r["backdoored"] else "own",
                        r.get("AE"), family, full["R"], full["collapse_ratio"],
                        best["strength"] if best else None, best["R"] if best else None,
                        *[collapse_at(r["rows"], family, b) for b in budgets],
                        lowest_objective(r["rows"], family)])
    models = md_table(["model", "trigger", "AE", "route", "R at a=1", "collapse at a=1",
                       "cheapest a", "cheapest R", *[f"collapse @ R={b:g}" for b in budgets],
                       "lowest objective (a > 0)"], per)
    note = ("\n\nMedians over the models of each group. *cheapest R*: the smallest R on the route "
            "whose collapse ratio is below 0.25 (– when no strength reaches it); *collapse @ R*: "
            "the collapse ratio interpolated along the route at that R (– when the route never "
            "costs that much); *lowest objective*: Eq. 5 at the full L1 weight, the minimum "
            "along the route over a > 0 (above the identity's, no state of the route beats "
            "doing nothing). Plot: the PNG beside this file.\n")
    return head + table + "\n\n## Per model\n\n" + models + note


def plot(rec: dict, path: str) -> None:
    """Collapse ratio against R per attack: backdoored models solid, benign controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = rec["attacks"]
    cols = min(3, len(attacks))
    fig, axes = plt.subplots(math.ceil(len(attacks) / cols), cols, squeeze=False,
                             figsize=(4.2 * cols, 3.4 * math.ceil(len(attacks) / cols)))
    colours = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green")))
    for ax, a in zip(axes.flat, attacks):
        for r in rec["models"]:
            if r["attack"] != a:
                continue
            for family in FAMILIES:
                pts = sorted((x["R"], x["collapse_ratio"]) for x in r["rows"]
                             if x["family"] == family)
                ax.plot(*zip(*pts), color=colours[family], lw=1, alpha=0.8,
                        ls="-" if r["backdoored"] else "--")
        ax.axhline(rec["collapse_threshold"], color="grey", lw=0.8)
        ax.axvline(rec["tau"], color="red", lw=0.8)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_ylim(0, 1.3)
        ax.set_xlim(left=0)
        ax.set_title(a)
        ax.set_xlabel("R")
        ax.set_ylabel("collapse ratio")
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=f) for f, c in colours.items()]
    handles += [plt.Line2D([], [], color="k", label="backdoored"),
                plt.Line2D([], [], color="k", ls="--", label="benign control")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
