"""`drmguard attack`: train a backdoored regression model and save it with its trigger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..errors import DrmguardError
from .common import ProfileOpt, QuietOpt, SeedOpt, ensure_new_path, parse_floats


def parse_targets(text: str) -> list[list[float]]:
    """"v1,v2" -> one target; "v1,v2;w1,w2" -> two targets (multi-target attacks)."""
    rows = [parse_floats(part, "--target") for part in text.split(";") if part.strip()]
    if not rows:
        raise DrmguardError("--target is empty")
    if len({len(r) for r in rows}) != 1:
        raise DrmguardError("every target vector in --target needs the same number of values")
    return rows


def attack_cmd(
        attack: str = typer.Option(..., "--attack", help="badnets, clean_label, wanet, ia, "
                                   "blend, sig, multi_wanet, adaptive or custom."),
        data: str = typer.Option(..., help="Training data spec (folder, .npz, name:PATH)."),
        out: Path = typer.Option(..., help="Output model directory."),
        target: str = typer.Option(None, help="Target vector 'v1,v2' (multi-target: "
                                   "'v1,v2;w1,w2'); default: labels of random training samples."),
        arch: str = typer.Option("", help="Architecture (default: the profile's)."),
        task: str = typer.Option(None, help="gaze, headpose or generic (default: data's)."),
        profile: str = ProfileOpt, seed: int = SeedOpt,
        option: list[str] = typer.Option(None, "--option", "-o",
                                         help="Attack option key=value (repeatable; values are "
                                              "JSON when they parse, e.g. s=2, rate=0.05)."),
        epochs: int = typer.Option(0, help="Override the attack's training epochs."),
        eval_data: str = typer.Option(None, "--eval-data",
                                      help="Data to report RE/AE on (default: a held-out part "
                                           "of --data)."),
        holdout: float = typer.Option(0.1, help="Fraction of --data held out for the report "
                                      "when --eval-data is not given (0: report on the "
                                      "training data)."),
        patch: Path = typer.Option(None, help="custom: trigger patch image (full-size; "
                                   "black = no trigger unless --mask is given)."),
        mask: Path = typer.Option(None, help="custom: trigger mask image (white = trigger)."),
        blend: Path = typer.Option(None, help="custom: image blended into the input."),
        alpha: float = typer.Option(None, help="custom: blend weight (default 0.2)."),
        quiet: bool = QuietOpt):
    """Train a backdoored model (trigger + target vector) and save it with its trigger."""
    from dataclasses import replace

    from ..attacks import attack_class, attack_train_config, make_attack
    from ..attacks.base import draw_target, parse_options
    from ..data import load_dataset, split_dataset
    from ..metrics import attack_metrics
    from ..models.io import save_model
    from ..profiles import get_profile
    from .train_cmds import load_training_data, task_for

    prof = get_profile(profile)
    cls = attack_class(attack)
    opts = parse_options(option or [])
    custom = {"patch": patch, "mask": mask, "blend": blend, "alpha": alpha}
    if cls.name == "custom":
        opts.update({k: (str(v) if isinstance(v, Path) else v) for k, v in custom.items()
                     if v is not None})
    elif any(v is not None for v in custom.values()):
        raise DrmguardError("--patch, --mask, --blend and --alpha are for --attack custom")
    if not 0 <= holdout < 1:
        raise DrmguardError(f"--holdout must be in [0, 1), got {holdout}")
    ensure_new_path(out, "model directory")

    ds, t = load_training_data(data, task, prof, quiet)
    if eval_data:
        test = load_dataset(eval_data, progress=not quiet).resized(ds.image_size)
        task_for(test, t.name)  # same task and dimension
        where = eval_data
    elif holdout > 0:
        by_subject = ds.subjects is not None and len(np.unique(ds.subjects)) >= 10
        parts = split_dataset(ds, (1 - holdout, 0, holdout), by_subject=by_subject, seed=seed)
        ds, test, where = parts.train, parts.test, f"{len(parts.test)} held-out images"
    else:
        test, where = ds, "the training data"
    if len(ds) == 0 or len(test) == 0:
        raise DrmguardError("not enough data to train and evaluate")

    if target:
        targets = parse_targets(target)
    else:
        targets = draw_target(ds.targets, seed, cls.num_targets)
        typer.echo("target: " + "; ".join(",".join(f"{v:.4g}" for v in r) for r in targets))
    atk = make_attack(cls.name, targets if len(targets) > 1 else targets[0], task=t,
                      image_size=ds.image_size, channels=ds.channels, seed=seed,
                      profile=prof.name, **opts)
    cfg = attack_train_config(cls.name, prof.name, t.name, seed)
    if epochs:
        cfg = replace(cfg, epochs=epochs, steps=None)
    arch_name = arch or prof.arch
    model, meta = atk.train_backdoored(ds, t, arch_name, cfg,
                                       prof.arch_kwargs if arch_name == prof.arch else {},
                                       progress=not quiet)
    meta["profile"] = prof.name
    save_model(model, out, meta)
    atk.save(out)
    m = attack_metrics(model, atk, test, t)
    typer.echo(f"trained {arch_name} with {cls.name} on {len(ds)} images "
               f"({meta['history']['seconds']:.0f} s); saved to {out}")
    units = f" {t.error_units}" if t.error_units else ""
    typer.echo(f"on {where}: RE {m['RE']:.3f}{units} (clean), AE {m['AE']:.3f}{units} "
               f"(poisoned vs target), DAE {m['DAE']:.3f}{units} (poisoned vs true)")
    for i, ae in enumerate(m.get("AE_per_target", [])[1:], 2):
        typer.echo(f"  target {i}: AE {ae:.3f}{units}")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_cmd)
