"""Write ``results/README.md``: every table in results/ with the commit, date and synthetic test
bed that made it, so a reader sees which tables are current and which are older records.

The test bed is the provenance's ``synthetic_version`` where recorded (since session 16), else
read from the commit: a commit that contains the version-3 renderer (``V3_COMMIT``) made version-3
data. Records without provenance (benchmarks' own JSON) are listed with what they name.

Usage::

    PYTHONPATH=src python benchmarks/results_index.py [--results results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from drmguard.data.synthetic import SYNTHETIC_VERSION

V3_COMMIT = "90dfdb7"  # "Synthetic renderer: texture ... SYNTHETIC_VERSION 3"


def contains(commit: str, ancestor: str, repo: Path) -> bool | None:
    """Whether ``commit`` has ``ancestor`` in its history (None when git cannot tell)."""
    sha = commit.removesuffix("-dirty")
    r = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, sha], cwd=repo,
                       capture_output=True)
    return {0: True, 1: False}.get(r.returncode)


def test_bed(prov: dict, repo: Path) -> str:
    if "synthetic_version" in prov:
        return f"v{prov['synthetic_version']}"
    commit = prov.get("commit")
    if not commit:
        return "–"
    has_v3 = contains(commit, V3_COMMIT, repo)
    return "?" if has_v3 is None else ("v3" if has_v3 else "v2")


def title(md: Path) -> str:
    if not md.exists():
        return "–"
    first = md.read_text().splitlines()[:1]
    return first[0].lstrip("# ").replace("|", "\\|") if first else "–"


def rows(results: Path, repo: Path) -> list[dict]:
    out = []
    for jp in sorted(results.glob("*.json")):
        try:
            rec = json.loads(jp.read_text())
        except ValueError:
            continue
        prov = rec.get("provenance", {}) if isinstance(rec, dict) else {}
        commit = prov.get("commit") or (rec.get("commit") if isinstance(rec, dict) else None)
        out.append({"file": jp.stem, "title": title(jp.with_suffix(".md")),
                    "commit": (commit or "–")[:7], "date": (prov.get("date") or "–")[:10],
                    "test_bed": ("digits" if rec.get("task") == "classification"
                                 else test_bed(prov, repo) if prov else "–"),
                    "command": prov.get("command", "")})
    return out


def markdown(items: list[dict]) -> str:
    current = f"v{SYNTHETIC_VERSION}"
    lines = ["# Results index", "",
             "Every table in this folder with the commit and date that made it and the synthetic "
             f"test bed it ran on. The current test bed is **{current}** (docs/synthetic.md); "
             "rows on an older one are records of earlier code, kept for the history in "
             "docs/method.md, not current results. Benchmark records without a provenance "
             "block show –. Regenerate with `PYTHONPATH=src python benchmarks/results_index.py`.",
             "", "| file | what | test bed | commit | date |", "|---|---|---|---|---|"]
    for r in items:
        bed = (r["test_bed"] if r["test_bed"] in (current, "–", "digits")
               else f"{r['test_bed']} (older)")
        name = f"[{r['file']}]({r['file']}.md)" if r["title"] != "–" else f"{r['file']}.json"
        lines.append(f"| {name} | {r['title']} | {bed} | {r['commit']} | {r['date']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    args = ap.parse_args()
    results = Path(args.results)
    repo = Path(__file__).resolve().parent.parent
    (results / "README.md").write_text(markdown(rows(results, repo)))
    print(f"wrote {results / 'README.md'}")


if __name__ == "__main__":
    main()
