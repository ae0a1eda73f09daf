"""The attacks table: does each attack implant, and is its trigger a key rather than damage?
(the paper's Tables 10 and 1, in shape, over a zoo of seeds).

Per attack, ``n_seeds`` backdoored models (seeds f..f+n-1, each with its own target drawn from
the training labels) and ``n_benign`` benign models (seeds f..f+m-1) come from the model zoo —
cached and shared with the identification and mitigation experiments. On the test split:

- per backdoored model: RE, AE, DAE, CTE, RNV, RAV (:func:`~drmguard.metrics.attack_metrics`,
  through the zoo's cached :func:`~.identification.attack_record`) and whether the backdoor is
  *implanted* (:func:`~drmguard.metrics.implanted`, AE < ``IMPLANT_FRACTION`` · CTE — the one
  criterion of every experiment);
- **key, not damage**: each backdoored model's own trigger T (every target's, for multi-target
  attacks) applied at full strength to each benign model. A key leaves a model that never
  learnt it working: the benign outputs' variance ratio (DRMGuard's collapse ratio,
  (1/K) Σ_k Var[F_k(T(x))] / Var[F_k(x)]) stays ≥ ``KEY_MIN_VARIANCE_RATIO`` and the benign
  model's error on T(x) against the true labels stays ≤ ``KEY_MAX_ERROR_RATIO`` × its clean
  error. An attack's trigger is a key iff that holds for every (backdoored model, benign model)
  pair; the table reports the worst pair (min ratio, max error ratio). Each pair is a cached
  run on the backdoored model (:func:`key_record`).

Per attack the summary gives the resolved options, implanted k/N (the models that did not
implant listed apart), the medians of RE/AE/DAE/RAV over all models and over the implanted ones,
and the key column.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from ..attacks import ATTACKS, attack_class
from ..metrics import IMPLANT_FRACTION
from ..profiles import get_profile
from ..training import mean_predictor_error
from ..utils import progress_bar
from .data import experiment_task
from .identification import attack_record, implant_status, model_specs
from .results import md_table, provenance, write_results
from .zoo import ModelSpec, Zoo

#: The attacks of the table, in the paper's order (the custom attack needs user images).
DEFAULT_ATTACKS = ("badnets", "clean_label", "wanet", "ia", "blend", "sig", "multi_wanet",
                   "adaptive")
DEFAULT_SEEDS = 10  # backdoored models per attack
DEFAULT_BENIGN = 3  # benign models the triggers are tried on
#: a trigger is a key iff, on benign models, the outputs keep at least this variance ratio ...
KEY_MIN_VARIANCE_RATIO = 0.8
#: ... and the error on T(x) against the true labels is at most this multiple of the clean error
KEY_MAX_ERROR_RATIO = 1.5
#: options left out of the "options" column (not strengths; targets are per seed)
_NOT_OPTIONS = ("seed", "profile", "targets")


def trigger_on_model(model, attack, images: torch.Tensor, labels: torch.Tensor, task,
                     batch_size: int = 256) -> dict:
    """What ``attack``'s trigger, every target's at full strength, does to ``model`` (one that
    need not carry it) on ``images`` with true ``labels``: the outputs' variance ratio
    (DRMGuard's :func:`~drmguard.defenses.drmguard.identify.collapse_ratio`) and the error on
    T(x) against the labels relative to the clean error; ``variance_ratio`` is the smallest and
    ``error_ratio`` the largest over the targets."""
    from ..defenses.drmguard.identify import collapse_ratio
    from ..training import predict

    labels = torch.as_tensor(labels, dtype=torch.float32)
    y = predict(model, images, batch_size)
    clean = float(task.error(y, labels).mean())
    ratios, errors = [], []
    for i in range(len(attack.targets)):
        y_t = predict(model, images, batch_size, transform=lambda x, i=i: attack.apply_for(x, i))
        ratios.append(collapse_ratio(y_t, y))
        errors.append(float(task.error(y_t, labels).mean()))
    error_ratios = [e / max(clean, 1e-12) for e in errors]
    return {"clean_error": clean, "trigger_error_per_target": errors,
            "variance_ratio_per_target": ratios, "error_ratio_per_target": error_ratios,
            "variance_ratio": min(ratios), "error_ratio": max(error_ratios)}


def is_key(rec: dict) -> bool:
    """Whether a :func:`trigger_on_model` result leaves the model working (see the module
    docstring)."""
    return bool(rec["variance_ratio"] >= KEY_MIN_VARIANCE_RATIO
                and rec["error_ratio"] <= KEY_MAX_ERROR_RATIO)


def key_record(zoo: Zoo, spec: ModelSpec, attack, benign: ModelSpec) -> dict:
    """The trigger of the backdoored zoo model ``spec`` on the benign zoo model ``benign``'s
    test split (:func:`trigger_on_model`; cached on ``spec`` per benign model)."""
    def compute():
        model = zoo.model(benign)[0]
        x, y = zoo.splits(benign).test.tensors()
        return trigger_on_model(model, attack, x, y, experiment_task(benign.task))
    return zoo.cached_run(spec, "attack", "key", {"benign": benign.key()}, compute)


def attack_specs(task: str, profile: str, attacks: list[str], n_seeds: int, n_benign: int,
                 first_seed: int = 0) -> list[ModelSpec]:
    """Benign seeds f..f+m-1, then per attack seeds f..f+n-1 (as the identification zoo)."""
    return model_specs(task, profile, attacks, n_benign, n_seeds, first_seed=first_seed)


def _runs(specs: list[ModelSpec]) -> list[tuple[ModelSpec, str, dict, object]]:
    """(spec, name, config, call) of every cached run of the table, kind "attack"."""
    benign = [s for s in specs if not s.backdoored]
    out = [(s, "metrics", {}, attack_record) for s in specs]
    out += [(s, "key", {"benign": b.key()}, partial(key_record, benign=b))
            for s in specs if s.backdoored for b in benign]
    return out


def _names(attacks) -> list[str]:
    return [attack_class(a).name for a in (attacks or DEFAULT_ATTACKS)]


def _check(n_seeds: int, n_benign: int) -> None:
    from ..errors import DrmguardError

    if n_seeds < 1:
        raise DrmguardError(f"`n_seeds` must be at least 1, got {n_seeds}")
    if n_benign < 1:
        raise DrmguardError(f"`n_benign` must be at least 1, got {n_benign}")


def attacks_work(task: str, profile: str = "cpu", attacks: list[str] | None = None,
                 n_seeds: int = DEFAULT_SEEDS, n_benign: int = DEFAULT_BENIGN,
                 first_seed: int = 0):
    """Everything :func:`run` computes, as tasks for an :class:`~.executor.Executor`: the
    models, their attack metrics and every (backdoored, benign) trigger pair."""
    from .executor import Run, Work

    _check(n_seeds, n_benign)
    specs = attack_specs(task, profile, _names(attacks), n_seeds, n_benign, first_seed)
    return Work(specs, [Run(s, call, "attack", name, cfg, gpu=False)
                        for s, name, cfg, call in _runs(specs)])


def plan_attacks(task: str, profile: str = "cpu", attacks: list[str] | None = None,
                 n_seeds: int = DEFAULT_SEEDS, n_benign: int = DEFAULT_BENIGN,
                 first_seed: int = 0, cache_dir: str | None = None,
                 rescan: bool = False) -> dict:
    """What :func:`run` would do with this cache, without doing it (see :meth:`Zoo.plan`;
    kind "attack": the attack metrics and the trigger pairs)."""
    _check(n_seeds, n_benign)
    specs = attack_specs(task, profile, _names(attacks), n_seeds, n_benign, first_seed)
    return Zoo(cache_dir, progress=False, rescan=rescan).plan(
        specs, "attack", [(s, name, cfg) for s, name, cfg, _ in _runs(specs)])


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _worst(m: dict, key: str):
    """A metric of a model, for a multi-target attack at its worst target (largest AE and RAV,
    smallest DAE)."""
    v = m[key]
    if not isinstance(v, list):
        return v
    return min(v) if key == "DAE" else max(v)


def summarise(models: list[dict], names: list[str]) -> list[dict]:
    """Per attack: implanted k/N, medians over all and over implanted models, the key column."""
    out = []
    for a in names:
        rows = [m for m in models if m["attack"] == a]
        imp = [m for m in rows if m["implanted"]]
        pairs = [p for m in rows for p in m["key"]]
        med = {}
        for group, sel in (("", rows), ("implanted_", imp)):
            for k in ("RE", "AE", "DAE", "RAV"):
                med[f"{group}{k}"] = _median([_worst(m, k) for m in sel])
        out.append({
            "attack": a, "options": rows[0]["options"] if rows else {}, "n": len(rows),
            "implanted": len(imp),
            "not_implanted_seeds": [m["seed"] for m in rows if m["implanted"] is False],
            "unmeasured_seeds": [m["seed"] for m in rows if m["implanted"] is None],
            "median": med, "key_pairs": len(pairs),
            "key_min_variance_ratio": min((p["variance_ratio"] for p in pairs), default=None),
            "key_max_error_ratio": max((p["error_ratio"] for p in pairs), default=None),
            "key": bool(pairs) and all(p["key"] for p in pairs)})
    return out


def result_name(task: str, profile: str, name: str | None = None) -> str:
    """The results file stem ``run`` writes: ``name``, else attacks-<task>-<profile>."""
    return name or f"attacks-{task}-{profile}"


def run(task: str, profile: str = "cpu", attacks: list[str] | None = None,
        n_seeds: int = DEFAULT_SEEDS, n_benign: int = DEFAULT_BENIGN, first_seed: int = 0,
        out_dir: str = "results", progress: bool = True, cache_dir: str | None = None,
        command: str = "", rescan: bool = False, executor=None, name: str | None = None) -> dict:
    """Train (or load from the zoo cache) and measure; write ``out_dir``/``name`` (default
    attacks-<task>-<profile>) .md and .json.
    ``rescan`` recomputes cached runs other code made (see :class:`Zoo`); an
    :class:`~.executor.Executor` computes the zoo and its runs in parallel first."""
    _check(n_seeds, n_benign)
    names = _names(attacks)
    t = experiment_task(task)
    zoo = Zoo(cache_dir, progress, rescan)
    if executor is not None:
        executor.run(zoo, attacks_work(task, profile, names, n_seeds, n_benign, first_seed))
    specs = attack_specs(task, profile, names, n_seeds, n_benign, first_seed)
    benign_specs = [s for s in specs if not s.backdoored]
    models = []
    for spec in progress_bar(specs, desc="attack table", enabled=progress):
        model, attack, meta = zoo.model(spec)
        att = attack_record(zoo, spec, model, attack, meta)
        row = {"model": spec.label(), "model_key": spec.key(), "attack": spec.attack,
               "seed": spec.seed, "RE": att["RE"],
               "train_seconds": meta.get("history", {}).get("seconds"),
               "epochs": meta.get("training", {}).get("epochs"), "code": att.get("code")}
        if spec.backdoored:
            multi = len(attack.targets) > 1
            for k in ("AE", "DAE", "CTE", "RNV", "RAV", "target", "real_target"):
                row[k] = att.get(f"{k}_per_target", att.get(k)) if multi else att.get(k)
            row["implanted"] = implant_status(att, True)
            row["options"] = {k: v for k, v in attack.config().items() if k not in _NOT_OPTIONS}
            row["attack_training"] = meta.get("attack_training", {})
            row["key"] = []
            for b in benign_specs:
                rec = key_record(zoo, spec, attack, b)
                row["key"].append({"benign": b.label(), "variance_ratio": rec["variance_ratio"],
                                   "error_ratio": rec["error_ratio"],
                                   "clean_error": rec["clean_error"], "key": is_key(rec)})
        models.append(row)
    splits = zoo.splits(specs[0])
    record = {"provenance": provenance(command or f"drmguard experiment attacks --task {task} "
                                       f"--profile {profile} --seeds {n_seeds} "
                                       f"--benign {n_benign} --first-seed {first_seed}"),
              "task": task, "profile": profile, "arch": get_profile(profile).arch,
              "attacks": names, "n_seeds": n_seeds, "n_benign": n_benign,
              "first_seed": first_seed, "implant_fraction": IMPLANT_FRACTION,
              "key_min_variance_ratio": KEY_MIN_VARIANCE_RATIO,
              "key_max_error_ratio": KEY_MAX_ERROR_RATIO,
              "n_train": len(splits.train), "n_test": len(splits.test),
              "error_units": t.error_units,
              "mean_predictor_error": mean_predictor_error(splits.train, splits.test, t),
              "summary": summarise(models, names), "models": models}
    write_results(out_dir, result_name(task, profile, name), record, to_markdown(record))
    return record


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def _options_text(opts: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in opts.items() if v is not None)


def _seeds_text(seeds: list) -> str:
    return ", ".join(str(s) for s in seeds) if seeds else ""


def to_markdown(rec: dict) -> str:
    u = rec["error_units"]
    f = rec["first_seed"]
    benign = [m for m in rec["models"] if m["attack"] is None]
    lines = [f"# Attacks on {rec['task']} ({rec['profile']} profile)", "",
             f"{rec['arch']} trained on {rec['n_train']} synthetic images; metrics on the "
             f"{rec['n_test']} test images (subjects unseen in training). Errors in {u}. "
             f"{rec['n_seeds']} backdoored models per attack (seeds "
             f"{f}–{f + rec['n_seeds'] - 1}, each with its own target) and {rec['n_benign']} benign models (seeds "
             f"{f}–{f + rec['n_benign'] - 1}; median RE "
             f"{_short(_median([m['RE'] for m in benign]))}); always predicting the training "
             f"mean gives {rec['mean_predictor_error']:.3f}.", "",
             f"**Implanted**: AE < {rec['implant_fraction']:g} · CTE for every target (CTE: the "
             "clean outputs' error to the target; `drmguard.metrics.implanted`, the criterion of "
             "every experiment). Models that did not implant are listed apart (*not implanted*); "
             "the medians are over all models and over the implanted ones, a multi-target attack's "
             "model counted at its worst target (largest AE and RAV, smallest DAE).", "",
             f"**Key, not damage**: each backdoored model's own trigger (every target's) at full "
             f"strength on each benign model: the benign outputs' variance ratio "
             f"(1/K) Σ_k Var[F_k(T(x))] / Var[F_k(x)] (DRMGuard's collapse ratio) and the benign "
             f"error on T(x) against the true labels / its clean error. *key* iff every pair has "
             f"ratio ≥ {rec['key_min_variance_ratio']:g} and error ratio ≤ "
             f"{rec['key_max_error_ratio']:g}; the columns give the worst pair.", "",
             "## Summary", ""]
    rows = []
    for s in rec["summary"]:
        m = s["median"]
        rows.append([s["attack"], _options_text(s["options"]), f"{s['implanted']}/{s['n']}",
                     _seeds_text(s["not_implanted_seeds"]) or None,
                     m["RE"], m["AE"], m["DAE"], m["RAV"],
                     m["implanted_RE"], m["implanted_AE"], m["implanted_DAE"],
                     m["implanted_RAV"], s["key_min_variance_ratio"],
                     s["key_max_error_ratio"], "yes" if s["key"] else "**no**"])
    lines.append(md_table(["attack", "options", "implanted", "not implanted (seeds)",
                           "RE", "AE", "DAE", "RAV", "RE (impl.)", "AE (impl.)", "DAE (impl.)",
                           "RAV (impl.)", "benign var ratio (min)", "benign error ratio (max)",
                           "key"], rows))
    unmeasured = [(s["attack"], s["unmeasured_seeds"]) for s in rec["summary"]
                  if s["unmeasured_seeds"]]
    if unmeasured:
        lines += ["", "Not measured (attack metrics recorded before CTE; `--rescan`): "
                  + "; ".join(f"{a} seeds {_seeds_text(x)}" for a, x in unmeasured) + "."]
    lines += ["", "## Per model", ""]
    for a in rec["attacks"]:
        mine = [m for m in rec["models"] if m["attack"] == a]
        for title, sel in (("", [m for m in mine if m["implanted"]]),
                           (" — not implanted", [m for m in mine if m["implanted"] is False]),
                           (" — not measured", [m for m in mine if m["implanted"] is None])):
            if not sel:
                continue
            lines += [f"### {a}{title}", ""]
            rows = [[m["seed"], m["RE"], m["AE"], m["DAE"], m["CTE"], m["RNV"], m["RAV"],
                     m["implanted"], min(p["variance_ratio"] for p in m["key"]),
                     max(p["error_ratio"] for p in m["key"]), all(p["key"] for p in m["key"]),
                     m["target"], m["train_seconds"]] for m in sel]
            lines += [md_table(["seed", "RE", "AE", "DAE", "CTE", "RNV", "RAV", "implanted",
                                "benign var ratio (min)", "benign error ratio (max)", "key",
                                "target y_t", "train s"], rows), ""]
    lines += ["### benign", ""]
    lines.append(md_table(["seed", "RE", "epochs", "train s"],
                          [[m["seed"], m["RE"], m["epochs"], m["train_seconds"]]
                           for m in benign]))
    return "\n".join(lines)


__all__ = ["run", "plan_attacks", "attacks_work", "trigger_on_model", "key_record", "is_key",
           "summarise", "DEFAULT_ATTACKS", "DEFAULT_SEEDS", "DEFAULT_BENIGN",
           "KEY_MIN_VARIANCE_RATIO", "KEY_MAX_ERROR_RATIO", "ATTACKS"]
