"""`drmguard scan`, `drmguard mitigate` and `drmguard demo` (DRMGuard on the command line)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import typer

from ..errors import DrmguardError, first_line
from .common import ProfileOpt, QuietOpt, SeedOpt, ensure_new_path, flag_names, write_json

from . import model_opts as mo


def load_scan_inputs(model_dir: str, data, task_name: str | None, allow_pickle: bool,
                     quiet: bool, arch=None, weights=None, input_size=None, mean=None, std=None,
                     feature_layer=None, error=None, columns=None):
    """(model, meta, benign set fitted to the model's input, task) for scan and mitigate: the
    command-line options parsed for :func:`drmguard.api.prepare` (which also takes a model
    file's missing input size from the data)."""
    from ..api import prepare

    model, meta, ds, task = prepare(
        model_dir, data, task_name, error=error, columns=columns, progress=not quiet,
        allow_pickle=allow_pickle, arch=arch or None, weights=weights or None,
        input_size=input_size or None, mean=mo._floats(mean, "--mean"),
        std=mo._floats(std, "--std"), feature_layer=feature_layer or None)
    mo.echo_notes(meta, quiet)
    return model, meta, ds, task


def expand_models(paths: list[str]) -> list[str]:
    """The model arguments of ``drmguard scan``: each a model, or a folder of model files and
    model directories (a drmguard model directory itself counts as one model)."""
    from ..models.io import MODEL_JSON, detect_format

    out: list[str] = []
    for arg in paths:
        p = Path(arg)
        if not p.is_dir() or (p / MODEL_JSON).exists():
            out.append(arg)
            continue
        found = []
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if (child / MODEL_JSON).exists():
                    found.append(str(child))
                continue
            try:
                if detect_format(child) in ("torchscript", "onnx", "pickle", "safetensors"):
                    found.append(str(child))
            except (DrmguardError, OSError):
                continue
        if not found:
            raise DrmguardError(f"{p} is neither a drmguard model directory nor a folder of "
                                "model files")
        out.extend(found)
    if len(set(out)) != len(out):
        raise DrmguardError("a model is named twice")
    return out


def scan_overrides(tau: float | None, lambda1: float | None, lambda3: float | None) -> dict:
    """The DRMGuard settings given on the command line, checked."""
    overrides = {}
    for name, value in (("tau", tau), ("lambda1", lambda1), ("lambda3", lambda3)):
        if value is None:
            continue
        if not value > 0 or value != value or value == float("inf"):
            raise DrmguardError(f"--{name} must be a positive finite number, got {value}")
        if name == "tau" and value >= 1:
            raise DrmguardError(f"--tau must be below 1 (R is a fraction of the image L1 norm), "
                                f"got {value}")
        overrides[name] = value
    return overrides


def scan_config(profile: str, task: str, tau: float | None, lambda1: float | None,
                lambda3: float | None):
    """The profile's calibrated DRMGuard settings with the command-line overrides checked."""
    from ..defenses.drmguard import default_config

    return default_config(profile, task, **scan_overrides(tau, lambda1, lambda3))


def print_scan(results: list[tuple[str, object]], console=None) -> None:
    """A verdict table (rich) for one or more (name, ScanResult or its ``to_dict()``)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="DRMGuard scan")
    for col in ("model", "verdict", "R", "τ", "collapse", "target estimate", "time"):
        table.add_column(col, justify="left" if col in ("model", "verdict") else "right")
    for name, res in results:
        r = res if isinstance(res, dict) else res.to_dict()
        if "error" in r:
            table.add_row(name, f"[yellow]error[/yellow]: {r['error']}", *[""] * 5)
            continue
        style = "bold red" if r["backdoored"] else "green"
        est = ", ".join(f"{n}={v:.3g}" for n, v in zip(r["target_names"], r["target_estimate"]))
        if r.get("target_class") is not None:  # a classifier: the class, and its probability
            k = r["target_class"]
            est = f"class {r['target_names'][k]} (p={r['target_estimate'][k]:.2f})"
        table.add_row(name, f"[{style}]{r['status']}[/{style}]", f"{r['R']:.4f}",
                      f"{r['tau']:.4f}", f"{r['collapse_ratio']:.3f}", est,
                      f"{r['timings']['total']:.0f} s")
    console.print(table)


TauOpt = typer.Option(None, "--tau", help="Identification threshold on R (profile default).")
Lambda1Opt = typer.Option(None, "--lambda1", help="Weight of the output-variance term (unit-free: each output's variance is divided by its benign variance).")
Lambda3Opt = typer.Option(None, "--lambda3", help="Weight of the feature-space term (FSRT).")


def scan_cmd(models: list[str] = typer.Argument(
                 ..., metavar="MODEL...", help="Model directories or files, or folders of model "
                                               "files (each is scanned)."),
             data: str = mo.DataOpt, task: str = mo.TaskOpt, error: str = mo.ErrorOpt,
             columns: str = mo.ColumnsOpt, profile: str = ProfileOpt, seed: int = SeedOpt,
             tau: float = TauOpt, lambda1: float = Lambda1Opt, lambda3: float = Lambda3Opt,
             json_out: str = typer.Option(None, "--json", help="Write the result as JSON to "
                                                               "this file ('-' for stdout); a "
                                                               "list of results for several "
                                                               "models."),
             report: Path = typer.Option(None, "--report", help="Write an HTML report (and "
                                                                "PNGs) into this new folder "
                                                                "(one subfolder per model when "
                                                                "there are several)."),
             fail_on_backdoor: bool = typer.Option(False, "--fail-on-backdoor",
                                                   help="Exit with code 3 when flagged (any "
                                                        "model)."),
             save_trigger: Path = typer.Option(None, "--save-trigger",
                                               help="Write the reversed trigger (safetensors) "
                                                    "to this new file, for `drmguard mitigate "
                                                    "--trigger` (one model only)."),
             arch: str = mo.ArchOpt, weights: str = mo.WeightsOpt,
             input_size: str = mo.InputSizeOpt, mean: str = mo.MeanOpt, std: str = mo.StdOpt,
             feature_layer: str = mo.FeatureLayerOpt, allow_pickle: bool = mo.AllowPickleOpt,
             defense: str = typer.Option("drmguard", "--defense",
                                         help="The detector: drmguard, or a baseline (nc = "
                                              "neural_cleanse, featurere; one model, no "
                                              "--report/--save-trigger/--tau/--lambda*)."),
             quiet: bool = QuietOpt):
    """Is this model backdoored? Reverse-engineer a trigger on benign data and decide.

    Several models (or a folder of them) are scanned one after the other on the same data, with
    one summary table; a model that cannot be read is reported in the table and the command
    then exits with code 2."""
    from .. import api
    from ..defenses.base import DETECTORS

    paths = expand_models(models)
    single = paths == list(models) and len(paths) == 1  # one model, not a folder of them
    if DETECTORS.canonical(defense) != "drmguard":
        return _baseline_scan(paths, single, defense, data, task, error, columns, profile, seed,
                              json_out, fail_on_backdoor, quiet,
                              dict(arch=arch, weights=weights, input_size=input_size, mean=mean,
                                   std=std, feature_layer=feature_layer,
                                   allow_pickle=allow_pickle),
                              report=report, save_trigger=save_trigger, tau=tau,
                              lambda1=lambda1, lambda3=lambda3)
    if report is not None:
        ensure_new_path(report, "report directory")
    if save_trigger is not None:
        if not single:
            raise DrmguardError("--save-trigger takes one model; scan the models one by one")
        ensure_new_path(save_trigger, "trigger file")
    if weights is not None and len(paths) > 1:
        raise DrmguardError("--weights names the weights of one model; scan the models one by "
                            "one")
    overrides = scan_overrides(tau, lambda1, lambda3)
    scan_config(profile, task or "gaze", tau, lambda1, lambda3)  # bad profile: before loading
    labelled = data if single else mo.load_labelled(data, columns, quiet)  # read once
    names = _short_names(paths)
    rows, records = [], []
    for path, name in zip(paths, names):
        try:
            model, _, ds, t = load_scan_inputs(path, labelled, task, allow_pickle, quiet, arch,
                                               weights, input_size, mean, std, feature_layer,
                                               error, columns)
        except DrmguardError as e:
            if single:
                raise
            message = flag_names(first_line(e))
            rows.append((name, {"error": message}))
            records.append({"model": str(path), "data": data, "error": message})
            continue
        if not single and not quiet:
            typer.echo(f"scanning {path} ...", err=True)
        res = api.scan(model, ds, t.name, profile=profile, seed=seed, progress=not quiet,
                       **overrides)
        extra = {"model": str(path), "data": data}
        rows.append((name, res))
        records.append({**extra, **res.to_dict()})
        if save_trigger is not None:
            res.save(save_trigger)
        if report is not None:
            from ..report import write_scan_report

            page = write_scan_report(res, report if single else report / name, extra=extra)
            if json_out != "-":
                typer.echo(f"report: {page}")
    if json_out != "-":
        print_scan(rows)
    if json_out:
        write_json(records[0] if single else records, json_out)
    failed = [r for r in records if "error" in r]
    if failed:
        raise DrmguardError(f"{len(failed)} of {len(records)} models could not be scanned "
                            f"(first: {failed[0]['model']}: {failed[0]['error']})")
    if fail_on_backdoor and any(r.get("backdoored") for r in records):
        raise typer.Exit(3)


def _baseline_scan(paths, single, defense, data, task, error, columns, profile, seed, json_out,
                   fail_on_backdoor, quiet, model_options, **drmguard_only):
    """``drmguard scan --defense NAME``: one baseline detector on one model (for classifiers:
    Neural Cleanse in its original, per-class form)."""
    from .. import api

    used = [k for k, v in drmguard_only.items() if v is not None]
    if used:
        raise DrmguardError(f"`{used[0]}` is a DRMGuard option; the {defense} scan does not "
                            "take it")
    if not single:
        raise DrmguardError(f"--defense {defense} scans one model at a time")
    model, _, ds, t = load_scan_inputs(paths[0], data, task, model_options["allow_pickle"],
                                       quiet, model_options["arch"], model_options["weights"],
                                       model_options["input_size"], model_options["mean"],
                                       model_options["std"], model_options["feature_layer"],
                                       error, columns)
    det = api.detect(model, ds, defense, t.name, profile=profile, seed=seed,
                     progress=not quiet)
    rec = {"model": str(paths[0]), "data": data, "task": t.name, **det.to_dict()}
    if json_out != "-":
        verdict = "backdoored" if det.backdoored else "benign"
        target = ""
        if det.target_estimate is not None and t.is_classification:
            target = f", target class {t.target_names[int(np.argmax(det.target_estimate))]}"
        typer.echo(f"{paths[0]}: {verdict} ({det.defense}: score {det.score:.3g}, threshold "
                   f"{det.threshold}{target}, {det.seconds:.0f} s)")
    if json_out:
        write_json(rec, json_out)
    if fail_on_backdoor and det.backdoored:
        raise typer.Exit(3)


def _short_names(paths: list[str]) -> list[str]:
    """A distinct short name per model path (its file or folder name; the parent's added
    where two share one), also used for the report subfolders."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) != len(names):
        names = [f"{Path(p).parent.name}-{Path(p).name}" for p in paths]
    if len(set(names)) != len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    return names


def mitigate_cmd(model_dir: str = typer.Argument(..., help="Model directory or file."),
                 data: str = mo.DataOpt,
                 out: Path = typer.Option(..., "--out", help="Directory for the mitigated "
                                                             "model (must not exist)."),
                 task: str = mo.TaskOpt, error: str = mo.ErrorOpt, columns: str = mo.ColumnsOpt,
                 profile: str = ProfileOpt, seed: int = SeedOpt,
                 trigger: Path = typer.Option(None, "--trigger",
                                              help="Reuse the reversed trigger of an earlier "
                                                   "`drmguard scan --save-trigger` instead of "
                                                   "scanning again."),
                 arch: str = mo.ArchOpt, weights: str = mo.WeightsOpt,
                 input_size: str = mo.InputSizeOpt, mean: str = mo.MeanOpt,
                 std: str = mo.StdOpt, feature_layer: str = mo.FeatureLayerOpt,
                 allow_pickle: bool = mo.AllowPickleOpt, quiet: bool = QuietOpt):
    """Scan (or reuse a saved scan), then fine-tune a copy of the model on D_b ∪ D_r
    (reversed trigger, true labels)."""
    from .. import api
    from ..defenses.drmguard import ScanResult, default_config
    from ..models.io import model_meta, save_model_any

    ensure_new_path(out, "model directory")
    model, meta, ds, t = load_scan_inputs(model_dir, data, task, allow_pickle, quiet, arch,
                                          weights, input_size, mean, std, feature_layer, error,
                                          columns)
    cfg = default_config(profile, t.name)
    earlier = None if trigger is None else ScanResult.load(trigger, model, cfg.device)
    new, info = api.mitigate(model, ds, t.name, profile=profile, seed=seed, prior=earlier,
                             progress=not quiet)
    new_meta = dict(meta) if meta.get("format") == "drmguard-model" else \
        model_meta(new, str(meta.get("arch") or "unknown"), t)
    new_meta["mitigation"] = {"defense": "drmguard", "source": str(model_dir),
                              "status": info["scan"]["status"], "R": info["scan"]["R"],
                              "trigger_file": None if trigger is None else str(trigger),
                              "finetune": info["finetune"]}
    save_model_any(new, out, new_meta)
    _copy_trigger_record(model_dir, out)
    source = f"scan ({trigger})" if trigger else "scan"
    typer.echo(f"{source}: {info['scan']['status']} (R = {info['scan']['R']:.4f}); fine-tuned "
               f"{info['finetune']['steps']} steps; benign error after: "
               f"{info['benign_error_after']:.3f} {t.error_units}; saved to {out}")


def _copy_trigger_record(src: str, dst: Path) -> None:
    """Keep a recorded attack's trigger next to the mitigated model (for --attack-metrics)."""
    from ..attacks import TRIGGER_FILE

    p = Path(src)
    trigger = (p if p.is_dir() else p.parent) / TRIGGER_FILE
    if trigger.exists():
        shutil.copy2(trigger, dst / TRIGGER_FILE)


def demo_cmd(profile: str = typer.Option("cpu", "--profile", help="tiny or cpu."),
             cache: Path = typer.Option(None, "--cache", help="Zoo cache for the demo's models "
                                                              "and runs (default: "
                                                              "$DRMGUARD_CACHE, else "
                                                              ".drmguard-cache, shared with the "
                                                              "experiments)."),
             report: Path = typer.Option(Path("drmguard-demo-report"), "--report",
                                         help="Folder for the HTML reports of the two scans "
                                              "(backdoored/ and benign/; an earlier demo "
                                              "report there is replaced)."),
             seed: int = SeedOpt, quiet: bool = QuietOpt):
    """End to end on the synthetic gaze task: train (or reuse) a benign and a BadNets model,
    scan both, write their HTML reports, mitigate the backdoored one, and show AE/DAE before
    and after.

    Models, scans and the mitigation are the experiments' zoo records (same cache keys), so a
    second run only reads them back."""
    from rich.console import Console
    from rich.table import Table

    from ..experiments.identification import attack_record, detect_record
    from ..experiments.mitigation import mitigate_record
    from ..experiments.zoo import ModelSpec, Zoo

    if profile not in ("tiny", "cpu"):
        raise DrmguardError("the demo runs on the tiny or cpu profile")
    pages = {name: report / folder for name, folder in (("badnets", "backdoored"),
                                                         ("benign", "benign"))}
    for page in pages.values():  # refuse a folder the demo did not write, before any work
        if page.exists() and not (page / "result.json").exists():
            ensure_new_path(page, "report directory")
    console = Console()
    t0 = time.perf_counter()
    zoo = Zoo(cache, progress=not quiet)
    specs = {name: ModelSpec("gaze", profile, None if name == "benign" else name, seed)
             for name in ("benign", "badnets")}
    models, scans = {}, []
    for name, spec in specs.items():
        console.print(f"using the cached {name} model ({zoo.model_dir(spec)})"
                      if zoo.has_model(spec)
                      else f"training the {name} demo model ({profile} profile) ...")
        models[name] = zoo.model(spec)
        det = detect_record(zoo, spec, models[name][0], "drmguard", {}, seed=seed)
        scans.append((name, det["details"]))
    print_scan(scans, console)
    spec = specs["badnets"]
    model, attack, meta = models["badnets"]
    before = attack_record(zoo, spec, model, attack, meta)
    console.print(f"BadNets target y_t = {[round(v, 3) for v in attack.target.tolist()]}, "
                  f"model's real target = {[round(v, 3) for v in before['real_target']]}, "
                  f"DRMGuard estimate = {[round(v, 3) for v in scans[1][1]['target_estimate']]}")
    for name, s in specs.items():
        extra = {"model": f"demo {name} model ({zoo.model_dir(s)})",
                 "data": f"the synthetic gaze task's benign set D_b ({profile} profile)"}
        if name == "badnets":
            extra["true_target"] = before["real_target"]
        page = _demo_report(zoo, s, models[name][0], dict(scans)[name], pages[name], extra,
                            seed)
        console.print(f"report of the {name} model's scan: {page}")
    console.print("mitigating the BadNets model (fine-tuning against the reversed trigger) ...")
    after = mitigate_record(zoo, spec, model, attack, "drmguard", {}, seed=seed)
    table = Table(title="DRMGuard mitigation of the BadNets model (test set, degrees)")
    for col in ("model", "clean error", "AE (to target; ↑ better)", "DAE (to truth; ↓ better)"):
        table.add_column(col, justify="right")
    for name, m in (("before", before), ("after", after)):
        table.add_row(name, f"{m['RE']:.2f}", f"{m['AE']:.2f}", f"{m['DAE']:.2f}")
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _demo_report(zoo, spec, model, record: dict, out: Path, extra: dict, seed: int) -> Path:
    """The HTML report of a demo scan: with its pictures when the zoo kept the scan's trigger
    (it does for every scan the demo runs), else from the record alone."""
    from ..experiments.identification import saved_scan
    from ..report import write_report, write_scan_report

    overwrite = (out / "result.json").exists()  # the demo's own earlier report
    res = saved_scan(zoo, spec, model, {}, seed)
    if res is None:
        return write_report({**extra, **record}, None, out, overwrite=overwrite)
    res.with_samples(zoo.splits(spec).benign)
    return write_scan_report(res, out, extra=extra, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_cmd)
    app.command("mitigate")(mitigate_cmd)
    app.command("demo")(demo_cmd)
