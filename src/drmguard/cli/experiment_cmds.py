"""`drmguard experiment ...`: rebuild the paper's tables on cached, resumable model zoos."""

from __future__ import annotations

import functools
import inspect
import math
import shlex
import sys

import typer

from ..errors import DrmguardError
from .common import ProfileOpt, QuietOpt

exp_app = typer.Typer(no_args_is_help=True,
                      help="Rebuild the paper's tables on model zoos (cached and resumable).")

CacheOpt = typer.Option(None, "--cache", help="Zoo cache directory (default: $DRMGUARD_CACHE, "
                                             "else .drmguard-cache).")
OutOpt = typer.Option("results", "--out", help="Directory for the Markdown + JSON results.")
TaskOpt = typer.Option("gaze", "--task", help="gaze or headpose (synthetic); identification "
                                              "also classification (the digits).")


WorkersOpt = typer.Option(1, "--workers", help="Models and runs computed at once (each "
                                                "with cores // N torch threads); 1: one after "
                                                "another.")
ExecutorOpt = typer.Option("local", "--executor", help="local (worker processes) or ray (a Ray "
                                                       "cluster; needs drmguard's ray extra).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (e.g. auto or "
                                                  "HOST:6379); none: Ray on this machine.")


def parallel(command):
    """Give an experiment command ``--workers``, ``--executor`` and ``--address``; it receives
    them as ``executor``, an :class:`~drmguard.experiments.executor.Executor` (None for the
    sequential default)."""
    sig = inspect.signature(command)
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t)
             for n, d, t in (("workers", WorkersOpt, int), ("executor", ExecutorOpt, str),
                             ("address", AddressOpt, str))]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
              if p.name != "executor"]

    @functools.wraps(command)
    def wrapper(*, workers: int, executor: str, address: str | None, **kw):
        from ..experiments.executor import Executor

        ex = Executor(workers, executor, address, progress=not kw.get("quiet"))
        return command(executor=None if ex.sequential else ex, **kw)

    wrapper.__signature__ = sig.replace(parameters=params + extra)
    wrapper.__annotations__ = {**command.__annotations__, "workers": int, "executor": str,
                               "address": str}
    return wrapper


def _list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DrmguardError(f"{what} is empty")
    return items


def _command() -> str:
    return "drmguard " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _check_task(task: str, classification: bool = False) -> None:
    """The experiment tasks: synthetic gaze and head pose; ``classification`` (the digits,
    docs/classification.md) where the experiment supports it (identification)."""
    if task == "classification" and classification:
        return
    if task not in ("gaze", "headpose"):
        extra = " (identification also classification)" if not classification else \
            " or classification (the digits)"
        raise DrmguardError(f"experiments run on the synthetic tasks gaze and headpose{extra}, "
                            f"not '{task}'")


def _check_counts(**counts: int) -> None:
    for k, v in counts.items():
        if v < 1:
            raise DrmguardError(f"--{k} must be at least 1")


PlanOpt = typer.Option(False, "--plan", help="Only say what is cached and what would be "
                                             "trained / run (with the times the cache "
                                             "recorded for alike work).")


def _first_seed_opt(default: int):
    return typer.Option(default, "--first-seed", min=0,
                        help="Seed of the first model of each kind (e.g. 100: development "
                             "models the tables never use, for calibration).")


RescanOpt = typer.Option(False, "--rescan", help="Recompute the cached runs (scans, "
                                                 "mitigations, attack metrics) that other code "
                                                 "made; trained models are reused.")


@exp_app.command("attacks")
@parallel
def attacks_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                attacks: str = typer.Option("", help="Comma-separated attacks (default: all)."),
                seeds: int = typer.Option(10, "--seeds", help="Backdoored models per attack."),
                benign: int = typer.Option(3, help="Benign models each attack's triggers are "
                                                   "tried on (key, not damage)."),
                name: str = typer.Option(None, help="Result file name."),
                first_seed: int = _first_seed_opt(0), plan: bool = PlanOpt,
                rescan: bool = RescanOpt, cache: str = CacheOpt, out: str = OutOpt,
                quiet: bool = QuietOpt, executor=None):
    """Attacks over seeds: implanted k/N, RE/AE/DAE (Table 10), RNV/RAV (Table 1), and whether
    each trigger is a key (benign models keep working under it)."""
    from ..experiments.attack_table import DEFAULT_ATTACKS, plan_attacks, result_name, run

    _check_task(task)
    _check_counts(seeds=seeds, benign=benign)
    names = _list(attacks, "--attacks") if attacks else None
    if plan:
        n = len(names) if names else len(DEFAULT_ATTACKS)
        typer.echo(f"{n} attack(s) × {seeds} seeds (from {first_seed}) + {benign} benign models; "
                   f"each trigger tried on each benign model (\"key\")")
        _print_plan(plan_attacks(task, profile, names, seeds, benign, first_seed, cache, rescan))
        return
    rec = run(task, profile=profile, attacks=names, n_seeds=seeds, n_benign=benign,
              first_seed=first_seed, out_dir=out, progress=not quiet, cache_dir=cache,
              command=_command(), rescan=rescan, executor=executor, name=name)
    for s in rec["summary"]:
        typer.echo(f"{s['attack']:>12}: implanted {s['implanted']}/{s['n']}  "
                   f"key {'yes' if s['key'] else 'no'} (var ratio ≥ "
                   f"{s['key_min_variance_ratio']:.2f}, error ratio ≤ "
                   f"{s['key_max_error_ratio']:.2f})")
    typer.echo(f"wrote {out}/{result_name(task, profile, name)}.md")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _print_plan(p: dict) -> None:
    def when(sec) -> str:
        return "time unknown" if sec is None else f"≈ {sec / 60:.1f} min"

    kind = p["kind"]
    runs = {"detect": "detections", "mitigate": "mitigations", "attack": "measurements"}[kind]
    how = "" if kind == "attack" else "with "
    typer.echo(f"cached: {p['cached']['models']} models, {p['cached']['runs']} {runs}")
    width = max(8, len(kind) + 1)
    for w in p["train"]:
        typer.echo(f"{'train':<{width}}{w['model']}  ({when(w['seconds'])})")
    for w in p[kind]:
        typer.echo(f"{kind:<{width}}{w['model']} {how}{w['defense']}  ({when(w['seconds'])})")
    n = len(p["train"]) + len(p[kind])
    extra = f"; {p['unestimated']} item(s) without a recorded time" if p["unestimated"] else ""
    took = ("no time recorded in this cache for any of them" if n and p["unestimated"] == n
            else f"{when(p['estimated_seconds'])} as recorded in this cache{extra}")
    typer.echo(f"to do: {len(p['train'])} models, {len(p[kind])} {runs}, {took}")
    for r in p.get("implant", []):
        typer.echo(f"implant {r['models']}: {implant_outlook(r)}")


def implant_outlook(r: dict) -> str:
    """How many of the seeds asked for should implant, by the share of alike cached models
    that did (tables count only implanted models as backdoored)."""
    k, n, seeds = r["implanted"], r["measured"], r["seeds"]
    if n == 0:
        return (f"{seeds} seed{'s' if seeds != 1 else ''}; no alike model measured yet, so the "
                "share that implants is unknown")
    text = f"{k}/{n} alike cached models implanted → ≈ {seeds * k / n:.1f} of {seeds} seeds"
    if k:
        text += f"; {math.ceil(seeds * n / k)} seeds for {seeds} implanted"
    return text


@exp_app.command("identification")
@parallel
def identification_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                       attacks: str = typer.Option("badnets,wanet",
                                                   help="Comma-separated; NAME:COUNT sets that "
                                                        "attack's model count."),
                       benign: int = typer.Option(10, help="Benign models."),
                       backdoored: int = typer.Option(10, help="Backdoored models per attack."),
                       defenses: str = typer.Option("drmguard", help="drmguard,nc,featurere "
                                                                     "(nc = neural_cleanse)"),
                       arch: str = typer.Option(None, help="Architecture (profile's default)."),
                       name: str = typer.Option(None, help="Result file name."),
                       first_seed: int = _first_seed_opt(0),
                       plan: bool = PlanOpt, rescan: bool = RescanOpt,
                       cache: str = CacheOpt, out: str = OutOpt, quiet: bool = QuietOpt,
                       executor=None):
    """Identification: confusion counts and ROC-AUC per attack (Tables 3, 5); with --task
    classification on digits classifiers (Appendix A.9; --defenses drmguard,neural_cleanse)."""
    from ..experiments.identification import (parse_attack_counts, plan_identification,
                                              run_identification)

    _check_task(task, classification=True)
    _check_counts(benign=benign, backdoored=backdoored)
    names, counts = parse_attack_counts(_list(attacks, "--attacks"), backdoored)
    if plan:
        _print_plan(plan_identification(task, names, benign, counts, profile,
                                        _list(defenses, "--defenses"), cache, arch,
                                        rescan=rescan, first_seed=first_seed))
        return
    rec = run_identification(task, names, benign, counts, profile,
                             _list(defenses, "--defenses"), cache, out, arch, name=name,
                             command=_command(), progress=not quiet, rescan=rescan,
                             first_seed=first_seed, executor=executor)
    for s in rec["summary"]:
        typer.echo(f"{s['defense']:>10} {s['attack']:>12}: TP {s['TP']} FP {s['FP']} FN {s['FN']} "
                   f"TN {s['TN']}  acc {s['accuracy']:.3f}  AUC {_num(s['roc_auc'])}")


@exp_app.command("mitigation")
@parallel
def mitigation_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                   attacks: str = typer.Option("wanet", help="Comma-separated; NAME:COUNT "
                                                             "sets that attack's model count."),
                   backdoored: int = typer.Option(5, help="Backdoored models per attack."),
                   mitigations: str = typer.Option("drmguard", help="drmguard,ft,fp,anp"),
                   arch: str = typer.Option(None, help="Architecture (profile's default)."),
                   name: str = typer.Option(None, help="Result file name."),
                   plan: bool = PlanOpt, rescan: bool = RescanOpt,
                   cache: str = CacheOpt, out: str = OutOpt, quiet: bool = QuietOpt,
                   executor=None):
    """Mitigation: RE, AE, DAE before and after each method (Tables 4, 6)."""
    from ..experiments.identification import parse_attack_counts
    from ..experiments.mitigation import plan_mitigation, run_mitigation

    _check_task(task)
    _check_counts(backdoored=backdoored)
    names, counts = parse_attack_counts(_list(attacks, "--attacks"), backdoored)
    if plan:
        _print_plan(plan_mitigation(task, names, counts, profile,
                                    _list(mitigations, "--mitigations"), cache, arch,
                                    rescan=rescan))
        return
    rec = run_mitigation(task, names, counts, profile,
                         _list(mitigations, "--mitigations"), cache, out, arch, name=name,
                         command=_command(), progress=not quiet, rescan=rescan,
                         executor=executor)
    for s in rec["summary"]:
        typer.echo(f"{s['attack']:>10} {s['method']:>10}: RE {s['RE_mean']:.2f}  "
                   f"AE {s['AE_mean']:.2f}  DAE {s['DAE_mean']:.2f}")


@exp_app.command("trigger-response")
@parallel
def trigger_response_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                         attacks: str = typer.Option("badnets,wanet,blend",
                                                     help="Comma-separated attacks."),
                         benign: int = typer.Option(3, help="Benign control models."),
                         backdoored: int = typer.Option(3, help="Backdoored models per attack."),
                         first_seed: int = _first_seed_opt(100),
                         name: str = typer.Option(None, help="Result file name."),
                         rescan: bool = RescanOpt, cache: str = CacheOpt, out: str = OutOpt,
                         quiet: bool = QuietOpt, executor=None):
    """What the cheapest real route to a collapse costs: each backdoored model's own trigger
    weakened (R, collapse, objective), benign models as the control; no search."""
    from ..experiments.trigger_response import run_trigger_response

    _check_task(task)
    _check_counts(benign=benign, backdoored=backdoored)
    rec = run_trigger_response(task, _list(attacks, "--attacks"), benign, backdoored, profile,
                               first_seed, cache, out, name, _command(), not quiet, rescan,
                               executor=executor)
    for s in rec["summary"]:
        r = "never" if s["cheapest_R"] is None else f"R {s['cheapest_R']:.4f}"
        typer.echo(f"{s['attack']:>12} {s['family']:>8} {s['group']:>10}: collapse < 0.25 in "
                   f"{s['n_collapsed']}/{s['n']}, cheapest {r}")


@exp_app.command("ablation")
@parallel
def ablation_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                 attacks: str = typer.Option("badnets,wanet", help="Comma-separated."),
                 benign: int = typer.Option(5), backdoored: int = typer.Option(5),
                 groups: str = typer.Option("fsrt,mtr,lambda3,benign",
                                            help="fsrt, mtr, lambda3, lambda1, units, select, l1, benign, "
                                                 "generator, mtr_norm"),
                 first_seed: int = _first_seed_opt(0), rescan: bool = RescanOpt,
                 cache: str = CacheOpt, out: str = OutOpt, quiet: bool = QuietOpt,
                 executor=None):
    """Ablations: without FSRT, without MTR, λ sweeps, benign-set size (Tables 7–9)."""
    from ..experiments.ablation import GROUPS, run_ablation

    _check_task(task)
    _check_counts(benign=benign, backdoored=backdoored)
    chosen = _list(groups, "--groups")
    bad = [g for g in chosen if g not in GROUPS]
    if bad:
        raise DrmguardError(f"unknown ablation group(s) {', '.join(bad)} (choose {', '.join(GROUPS)})")
    rec = run_ablation(task, _list(attacks, "--attacks"), benign, backdoored, profile, chosen,
                       cache, out, command=_command(), progress=not quiet, rescan=rescan,
                       first_seed=first_seed, executor=executor)
    for r in rec["rows"]:
        typer.echo(f"{r['variant']:>28} {r['attack']:>8}: acc {r['accuracy']:.3f}  "
                   f"AUC {_num(r['roc_auc'])}")


@exp_app.command("stability")
@parallel
def stability_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                  attacks: str = typer.Option("badnets,wanet", help="Comma-separated."),
                  benign: int = typer.Option(10), backdoored: int = typer.Option(10),
                  seeds: str = typer.Option("1,2", help="Other scan seeds (each at 1 thread)."),
                  threads: str = typer.Option("2", help="Other torch thread counts (seed 0)."),
                  first_seed: int = _first_seed_opt(0), rescan: bool = RescanOpt,
                  cache: str = CacheOpt, out: str = OutOpt, quiet: bool = QuietOpt,
                  executor=None):
    """Stability: the identification zoo rescanned with other scan seeds and thread counts;
    counts the verdicts that flip."""
    from ..experiments.stability import run_stability

    _check_task(task)
    _check_counts(benign=benign, backdoored=backdoored)
    seed_list, thread_list = _ints(seeds, "--seeds", 0), _ints(threads, "--threads", 1)
    rec = run_stability(task, _list(attacks, "--attacks"), benign, backdoored, profile,
                        seed_list, thread_list, cache, out, command=_command(),
                        progress=not quiet, rescan=rescan, first_seed=first_seed,
                        executor=executor)
    for r in rec["summary"]:
        typer.echo(f"{r['variant']:>20} {r['attack']:>8}: acc {r['accuracy']:.3f}  "
                   f"AUC {_num(r['roc_auc'])}  flips {r['flips']}")
    typer.echo(f"flips over all variants: {rec['total_flips']}")


def _ints(text: str, what: str, least: int) -> list[int]:
    """A comma-separated list of integers ≥ ``least``."""
    try:
        vals = [int(t) for t in _list(text, what)]
    except ValueError:
        raise DrmguardError(f"{what} takes comma-separated integers, not '{text}'") from None
    if any(v < least for v in vals):
        raise DrmguardError(f"{what} values must be ≥ {least}, not '{text}'")
    return vals


@exp_app.command("architectures")
@parallel
def architectures_cmd(task: str = TaskOpt, profile: str = ProfileOpt,
                      archs: str = typer.Option("resnet34,mobilenet_v1",
                                                help="Comma-separated architectures."),
                      attacks: str = typer.Option("badnets,wanet",
                                                  help="Comma-separated attacks."),
                      benign: int = typer.Option(5, help="Benign models per architecture."),
                      backdoored: int = typer.Option(5, help="Backdoored models per attack "
                                                             "and architecture."),
                      plan: bool = PlanOpt, cache: str = CacheOpt, out: str = OutOpt,
                      quiet: bool = QuietOpt, executor=None):
    """Identification and DRMGuard's mitigation per architecture (Tables 12–13): each
    architecture's own tables and the summary architectures-<task>-<profile>."""
    from ..experiments.architectures import plan_architectures, result_name, run_architectures

    _check_task(task)
    _check_counts(benign=benign, backdoored=backdoored)
    arch_list, attack_list = _list(archs, "--archs"), _list(attacks, "--attacks")
    if plan:
        for a, p in plan_architectures(task, arch_list, attack_list, benign, backdoored,
                                       profile, cache):
            typer.echo(f"--- {a}")
            _print_plan(p)
        return

    def echo(arch: str, rows: list[dict]) -> None:
        for r in rows:
            typer.echo(f"{arch:>14} {r['attack']:>10}: acc {r['accuracy']:.3f}  AUC "
                       f"{_num(r['roc_auc'])}  DAE {_num(r['DAE_before'])} → "
                       f"{_num(r['DAE_after'])}")

    run_architectures(task, arch_list, attack_list, benign, backdoored, profile, cache, out,
                      command=_command(), progress=not quiet, executor=executor, on_arch=echo)
    typer.echo(f"wrote {out}/{result_name(task, profile)}.md")


def register(app: typer.Typer) -> None:
    app.add_typer(exp_app, name="experiment")
