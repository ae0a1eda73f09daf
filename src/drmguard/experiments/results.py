"""Writing experiment results: JSON + Markdown under results/, stamped with the commit."""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path

import torch

from .. import __version__
from ..utils import code_digest, git_commit


def provenance(command: str) -> dict:
    from ..data.synthetic import SYNTHETIC_VERSION

    return {"command": command, "commit": git_commit(), "drmguard_version": __version__,
            "synthetic_version": SYNTHETIC_VERSION,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "machine": platform.machine(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads()}


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(fmt(x, digits) for x in v) + ")"
    return str(v)


def md_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; a "|" inside a cell (e.g. "|D_b|") is escaped."""
    def cell(c) -> str:
        return fmt(c).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: str | Path, name: str, record: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``name``.json and ``name``.md (with a provenance footer) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"{name}.json", out / f"{name}.md"
    jp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    prov = record.get("provenance", {})
    footer = (f"\n\n---\nCommand: `{prov.get('command', '')}`  \nCommit: `{prov.get('commit')}` · "
              f"drmguard {prov.get('drmguard_version')} · "
              + (f"synthetic v{prov['synthetic_version']} · " if "synthetic_version" in prov
                 else "")
              + f"torch {prov.get('torch')} · "
              f"{prov.get('device')} ({prov.get('threads')} thread"
              f"{'' if prov.get('threads') == 1 else 's'}) · {prov.get('date')}\n")
    mp.write_text(markdown.rstrip() + footer + runs_line(record.get("models", [])))
    return jp, mp


def runs_line(models: list) -> str:
    """Which code made the table's cached runs (rows with a ``code`` field): a zoo cache
    reuses runs across code changes, and this line makes that visible."""
    codes = [m["code"] for m in models if isinstance(m, dict) and "code" in m]
    if not codes:
        return ""
    now = code_digest()
    other = sum(c != now for c in codes)
    return (f"\nRuns: {len(codes) - other} of {len(codes)} made by this code (`{now}`)"
            + (f"; {other} by earlier code, reused from the cache (`--rescan` recomputes them)"
               if other else "") + "\n")


#: Fields of a results record that differ between two computations of the same numbers.
VOLATILE_FIELDS = frozenset({"provenance", "seconds", "wall_seconds", "timings", "threads"})


def comparable(record):
    """A results record without its timing, thread and provenance fields (:data:`VOLATILE_FIELDS`, at
    any depth): two runs of an experiment that computed the same numbers give equal ones."""
    if isinstance(record, dict):
        return {k: comparable(v) for k, v in record.items() if k not in VOLATILE_FIELDS}
    if isinstance(record, list):
        return [comparable(v) for v in record]
    return record
