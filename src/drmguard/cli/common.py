"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import typer

from ..errors import DrmguardError

QuietOpt = typer.Option(False, "--quiet", "-q", help="Hide progress bars.")
SeedOpt = typer.Option(0, "--seed", help="Random seed (same seed, same result).")
ProfileOpt = typer.Option("cpu", "--profile", help="tiny (tests), cpu (default) or paper (GPU).")


_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`(=)?")


def flag_names(text: str) -> str:
    """A library message in the CLI's words: the parameters it names in backquotes become the
    command's flags (`columns` -> --columns, `task`=generic -> --task generic). The one place
    where library parameter names meet command-line flags."""
    return _PARAM.sub(lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2)
                                                                      else ""), text)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise DrmguardError(f"{what} must be comma-separated numbers, got '{text}'") from None
    if not vals:
        raise DrmguardError(f"{what} is empty")
    return vals


def write_json(obj, out: str | None) -> None:
    """Write JSON to a file, or to stdout when ``out`` is '-'."""
    text = json.dumps(obj, indent=2)
    if out in (None, "-"):
        sys.stdout.write(text + "\n")
    else:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")


def ensure_new_path(path: str | Path, what: str = "output") -> Path:
    """Refuse to overwrite anything the user wrote."""
    p = Path(path)
    if p.exists() and (p.is_file() or any(p.iterdir())):
        raise DrmguardError(f"{what} {p} already exists and is not empty; choose another path")
    return p
