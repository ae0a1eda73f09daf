"""The scan report: one self-contained HTML page (plus its PNG files and the result JSON).

:func:`write_report` takes the JSON-safe dict of a DRMGuard scan (schema ``drmguard.scan/1``,
documented in ``docs/report-schema.md``) and the pictures the scan kept, and writes::

    OUT/index.html      the page; every picture embedded as base64, so it can be mailed alone
    OUT/result.json     the scan result it shows
    OUT/img/*.png       the same pictures as files (benign, reversed, residual, attention,
                        trajectory), for slides and papers

Every part of the page is optional: a result without images, trajectory or timings still gives
a page with the verdict. :func:`screenshot` renders a page with headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from . import __version__
from .errors import DrmguardError
from .schema import SCAN_SCHEMA as SCHEMA

MAX_SAMPLES = 8  # images per row of the grid
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}
.sub{color:#5b6372;font-size:13px;margin-bottom:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:16px 20px;
margin-bottom:16px}
.verdict{display:flex;gap:24px;align-items:center;flex-wrap:wrap}
.badge{font-size:22px;font-weight:700;padding:12px 20px;border-radius:8px;color:#fff}
.badge-sub{font-size:13px;font-weight:500;margin-top:4px}
.bad{background:#c62828}.good{background:#2e7d32}.unknown{background:#6b7280}
.stat{font-size:14px;line-height:1.7}.stat b{font-variant-numeric:tabular-nums}
table{border-collapse:collapse;font-size:13px}
td,th{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{color:#5b6372;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid td{border:none;padding:3px;text-align:center}
.grid img{width:96px;height:auto;image-rendering:pixelated;border-radius:3px;display:block}
.grid th{writing-mode:horizontal-tb;white-space:nowrap;padding-right:12px}
.fig{max-width:100%;height:auto}
.cols{display:flex;gap:16px;flex-wrap:wrap}.cols>.card{flex:1 1 420px}
.note{color:#5b6372;font-size:12px;margin-top:8px}
pre{font-size:11px;background:#f8f9fb;padding:10px;overflow:auto;max-height:360px}
"""


# ------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` accepts: numpy/torch scalars and arrays as Python
    values, tuples as lists, NaN and inf as None."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _num(v: Any, digits: int = 4) -> str:
    """A number for display; n/a for missing or non-numeric values."""
    if isinstance(v, bool) or v is None:
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(f):
        return "n/a"
    if f == 0:
        return "0"
    if abs(f) < 1e-3 or abs(f) >= 1e6:
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """H×W×C (or H×W) image as uint8 H×W or H×W×3 for PNG."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 + 1e-6 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):  # C×H×W
        a = np.moveaxis(a, 0, -1)
        a = a[..., 0] if a.shape[-1] == 1 else a
    if a.ndim not in (2, 3):
        raise DrmguardError(f"cannot show an image of shape {np.asarray(img).shape}")
    return a


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


def _fig_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


class _Assets:
    """Pictures written to ``img/`` and embedded in the page."""

    def __init__(self, out: Path, embed: bool):
        self.dir = out / "img"
        self.embed = embed

    def add(self, name: str, png: bytes) -> str:
        """Write ``img/name`` and return the ``src`` for an <img> tag."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / name).write_bytes(png)
        if self.embed:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return f"img/{name}"


def _canonical(result: Mapping) -> dict:
    """The fields the page shows, from either spelling of a scan result.

    ``ScanResult.to_dict()`` writes ``backdoored``, ``R``, ``tau``, ``collapse_threshold`` and
    the trajectory as ``[{"step", "estimate"}]`` (its ``score`` is the detection score, higher =
    more suspicious); the short form writes ``verdict``, ``score`` (= R), ``threshold`` and
    ``[[step, [values]]]``. Both are read; the short names win where both are given.

    The verdict and the status are the scan's own: the page shows them and never recomputes
    them from R and τ (a search that never collapsed the outputs can have R ≈ 0 and still be no
    trigger at all).
    """
    r = dict(result)
    cfg = r.get("config") if isinstance(r.get("config"), Mapping) else {}
    if "verdict" not in r and "backdoored" in r:
        r["verdict"] = r["backdoored"]
    if "R" not in r:  # the short spelling: ``score`` is R
        r["R"] = r.get("score")
    if "threshold" not in r:
        r["threshold"] = r.get("tau", cfg.get("tau"))
    if r.get("collapse_threshold") is None:
        r["collapse_threshold"] = cfg.get("collapse_threshold")
    traj = r.get("trajectory")
    if isinstance(traj, (list, tuple)):
        r["trajectory"] = [[e.get("step"), e.get("estimate")] if isinstance(e, Mapping) else e
                           for e in traj]
    return r


# ------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------
STATUS_TEXT = {  # the scan's status -> (badge colour, badge text, explanation)
    "backdoored": ("bad", "BACKDOOR DETECTED",
                   "a tiny universal change (R &lt; τ) collapses the outputs to one vector"),
    "benign": ("good", "No backdoor found",
               "the outputs collapse only under a large change of the images (R &ge; τ)"),
    "no cheap trigger found": ("good", "No backdoor found",
                               "the search never collapsed the outputs, so its R measures no "
                               "trigger: no cheap trigger was found with these settings"),
}


def _verdict_section(r: Mapping) -> str:
    verdict, status = r.get("verdict"), r.get("status")
    known = STATUS_TEXT.get(status) if isinstance(status, str) else None
    if verdict is True:
        cls, label = "bad", "BACKDOOR DETECTED"
    elif verdict is False:
        cls, label = "good", "No backdoor found"
    else:
        cls, label = "unknown", "No verdict"
    collapsed = None  # whether the outputs collapsed, when the record says
    try:
        collapsed = float(r["collapse_ratio"]) < float(r["collapse_threshold"])
    except (KeyError, TypeError, ValueError):
        pass
    if status == "no cheap trigger found":
        collapsed = False
    score, tau = r.get("R"), r.get("threshold")
    cmp = ""
    try:
        cmp = "&lt;" if float(score) < float(tau) else "&ge;"
    except (TypeError, ValueError):
        pass
    lines = [f"R = <b>{_num(score)}</b> {cmp} τ = <b>{_num(tau)}</b>"]
    if r.get("collapse_ratio") is not None:
        limit = r.get("collapse_threshold")
        lim = f" (outputs collapse when &lt; {_num(limit)})" if limit is not None else ""
        lines.append(f"collapse ratio = <b>{_num(r.get('collapse_ratio'))}</b>{lim}")
    if status:
        lines.append(f"status: <b>{_e(status)}</b>")
    if known is not None and (verdict is True) == (known[0] == "bad"):
        lines.append(f'<span class="note">{known[2]}</span>')
    sub = f'<div class="badge-sub">{_e(status)}</div>' if status and \
        str(status).lower() not in label.lower() else ""
    gauge = _gauge_svg(score, tau, verdict, collapsed)
    return (f'<section class="card verdict"><div class="badge {cls}">{label}{sub}</div>'
            f'<div class="stat">{"<br>".join(lines)}</div>{gauge}</section>'
            '<p class="note">R is the size of the change the reversed trigger makes to the '
            "benign images (mean L1 change relative to the largest image's L1 norm; lower = a "
            "cheaper universal trigger). The model is flagged when R &lt; τ and its outputs on "
            "the reversed images collapse to one target vector (collapse ratio = variance of "
            "the reversed outputs / variance of the benign outputs).</p>")


def _gauge_svg(score, tau, verdict=None, collapsed=None) -> str:
    """A horizontal bar: where R lies relative to τ. The marker takes the scan's verdict
    (red: flagged, green: not flagged, grey: no verdict); when the outputs never collapsed,
    R measures no trigger and the marker is hollow and grey, whatever its position."""
    try:
        s, t = float(score), float(tau)
    except (TypeError, ValueError):
        return ""
    if not (math.isfinite(s) and math.isfinite(t)) or t <= 0 or s < 0:
        return ""
    top = max(2 * t, 1.15 * s)
    x = lambda v: 10 + 280 * min(v, top) / top  # noqa: E731
    colour = "#c62828" if verdict is True else "#2e7d32" if verdict is False else "#6b7280"
    marker = f'<circle cx="{x(s):.1f}" cy="21" r="7" fill="{colour}"/>'
    label = "R"
    if collapsed is False:
        marker = (f'<circle cx="{x(s):.1f}" cy="21" r="6" fill="#fff" stroke="#6b7280" '
                  'stroke-width="2"/>')
        label = "R (no collapse)"
    return (f'<svg width="300" height="48" role="img" aria-label="R vs tau">'
            f'<rect x="10" y="16" width="280" height="10" rx="5" fill="#e5e7eb"/>'
            f'<rect x="10" y="16" width="{x(t) - 10:.1f}" height="10" rx="5" fill="#fde2e2"/>'
            f'<line x1="{x(t):.1f}" y1="8" x2="{x(t):.1f}" y2="34" stroke="#1d2330" '
            f'stroke-width="2"/><text x="{x(t):.1f}" y="46" font-size="11" '
            f'text-anchor="middle">τ</text>{marker}'
            f'<text x="{max(x(s), 40):.1f}" y="7" font-size="11" text-anchor="middle">{label}'
            '</text></svg>')


def _header(r: Mapping) -> str:
    parts = []
    for key, label in (("model", "model"), ("data", "benign data"), ("task", "task"),
                       ("n_benign", "benign images"), ("created", "created")):
        v = r.get(key)
        if isinstance(v, Mapping):
            v = v.get("name", json.dumps(json_safe(v)))
        if v not in (None, ""):
            parts.append(f"{label}: {_e(v)}")
    return (f"<h1>drmguard scan report</h1><div class=\"sub\">{' · '.join(parts)}"
            f"{' · ' if parts else ''}drmguard {_e(r.get('drmguard_version', __version__))}</div>")


def _target_section(r: Mapping) -> str:
    est = r.get("target_estimate")
    if not isinstance(est, (list, tuple)) or not est:
        return ""
    names = r.get("target_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(est):
        names = [f"y{i}" for i in range(len(est))]
    true = r.get("true_target")
    has_true = isinstance(true, (list, tuple)) and len(true) == len(est)
    head = "<tr><th>output</th><th>estimated target</th>" + \
        ("<th>recorded target</th>" if has_true else "") + "</tr>"
    rows = "".join(
        f"<tr><td>{_e(n)}</td><td class=\"num\">{_num(v)}</td>"
        + (f"<td class=\"num\">{_num(true[i])}</td>" if has_true else "") + "</tr>"
        for i, (n, v) in enumerate(zip(names, est)))
    units = r.get("target_units")
    note = f'<p class="note">units: {_e(units)}</p>' if units else ""
    return (f'<section class="card"><h2>Target vector</h2><p class="note">The outputs the '
            f"model gives the reversed images: the attacker's target when the model is "
            f"backdoored.</p><table>{head}{rows}</table>{note}</section>")


def _grid_section(images: Mapping, assets: _Assets, residual_scale=None) -> str:
    rows = [("benign", "benign x"), ("reversed", "reversed x̃"), ("residual", "residual")]
    present = [(k, lab) for k, lab in rows if images.get(k) is not None and len(images[k])]
    if not present:
        return ""
    n = min(MAX_SAMPLES, *(len(images[k]) for k, _ in present))
    body = []
    for key, label in present:
        srcs = [assets.add(f"{key}_{i}.png", _png_bytes(images[key][i])) for i in range(n)]
        cells = "".join(f'<td><img alt="{key} {i}" src="{src}"></td>'
                        for i, src in enumerate(srcs))
        body.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    amp = f"divided by {_num(residual_scale)}" if residual_scale else "amplified"
    return ('<section class="card"><h2>Reversed trigger</h2><p class="note">Benign images x, '
            "the reversed poisoned images x̃ (generator G with the MTR blend), and the "
            f"residual |x̃ − x| ({amp} to be visible).</p>"
            f'<table class="grid">{"".join(body)}</table></section>')


def _attention_section(images: Mapping, assets: _Assets) -> str:
    att = images.get("attention")
    if att is None:
        return ""
    from matplotlib.figure import Figure

    a = np.asarray(att, dtype=np.float64)
    a = a[..., 0] if a.ndim == 3 else a
    if a.ndim != 2:
        raise DrmguardError(f"the attention map must be H×W, got shape {a.shape}")
    benign = images.get("benign")
    fig = Figure(figsize=(6.4, 3.0))
    axes = fig.subplots(1, 2 if benign is not None and len(benign) else 1, squeeze=False)[0]
    im = axes[0].imshow(a, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("MTR attention (kept pixels)", fontsize=9)
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04)
    if len(axes) > 1:
        base = _to_uint8(np.mean(np.asarray(benign[:MAX_SAMPLES], dtype=np.float64), 0))
        axes[1].imshow(base, cmap="gray" if base.ndim == 2 else None, interpolation="nearest")
        if a.shape == base.shape[:2]:
            axes[1].imshow(a, cmap="inferno", alpha=0.55, vmin=0, vmax=1,
                           interpolation="nearest")
        axes[1].set_title("over the mean benign image", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    src = assets.add("attention.png", _fig_png(fig))
    return ('<section class="card"><h2>Attention map (MTR)</h2><p class="note">Where the model '
            "looks on benign images; the reversed trigger may not change these pixels "
            "(momentum reverse trigger).</p>"
            f'<img class="fig" alt="attention map" src="{src}"></section>')


def _trajectory_section(r: Mapping, assets: _Assets) -> str:
    traj = r.get("trajectory")
    if not isinstance(traj, (list, tuple)) or not traj:
        return ""
    steps, values = [], []
    for entry in traj:
        try:
            step, vals = entry
            vals = [float("nan") if v is None else float(v) for v in vals]
        except (TypeError, ValueError):
            continue
        steps.append(float(step))
        values.append(vals)
    if not values or len({len(v) for v in values}) != 1:
        return ""
    from matplotlib.figure import Figure

    v = np.asarray(values)
    names = r.get("target_names")
    if not isinstance(names, (list, tuple)) or len(names) != v.shape[1]:
        names = [f"y{i}" for i in range(v.shape[1])]
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    for i, name in enumerate(names):
        line, = ax.plot(steps, v[:, i], label=f"{name} estimate", lw=1.6)
        true = r.get("true_target")
        if isinstance(true, (list, tuple)) and len(true) == v.shape[1] and true[i] is not None:
            ax.axhline(float(true[i]), color=line.get_color(), ls="--", lw=1,
                       label=f"{name} recorded target")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("mean output on reversed images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    src = assets.add("trajectory.png", _fig_png(fig))
    return ('<section class="card"><h2>Target-estimate trajectory</h2><p class="note">The mean '
            "output on the reversed images during the search.</p>"
            f'<img class="fig" alt="trajectory" src="{src}"></section>')


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _value(v: Any) -> str:
    if isinstance(v, float):
        return _num(v, 5)
    if isinstance(v, (list, tuple, Mapping)):
        return _e(json.dumps(json_safe(v)))
    return _e(v)


def _tables_section(r: Mapping) -> str:
    parts = []
    timings = r.get("timings")
    if isinstance(timings, Mapping) and timings:
        rows = "".join(f'<tr><td>{_e(k)}</td><td class="num">{_num(v)} s</td></tr>'
                       for k, v in _flatten(timings))
        parts.append(f'<section class="card"><h2>Timings</h2><table>{rows}</table></section>')
    cfg = r.get("config")
    if isinstance(cfg, Mapping) and cfg:
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{_value(v)}</td></tr>" for k, v in _flatten(cfg))
        parts.append(f'<section class="card"><h2>Settings</h2><table>{rows}</table></section>')
    return f'<div class="cols">{"".join(parts)}</div>' if parts else ""


def _notes_section(r: Mapping) -> str:
    notes = r.get("notes")
    if isinstance(notes, str):
        notes = [notes]
    if not isinstance(notes, (list, tuple)) or not notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<section class="card"><h2>Notes</h2><ul>{items}</ul></section>'


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------
def render_html(result: Mapping, images: Mapping[str, np.ndarray] | None,
                assets: _Assets) -> str:
    """The page as a string (pictures handed to ``assets``)."""
    images = images or {}
    raw, result = result, _canonical(result)
    body = "".join([
        _header(result), _verdict_section(result), _notes_section(result),
        _target_section(result), _grid_section(images, assets, result.get("residual_scale")),
        '<div class="cols">', _attention_section(images, assets),
        _trajectory_section(result, assets), "</div>", _tables_section(result),
        '<section class="card"><details><summary>Scan result (JSON)</summary><pre>'
        f"{_e(json.dumps(json_safe(raw), indent=2))}</pre></details></section>",
    ])
    title = "drmguard scan: " + ("backdoor detected" if result.get("verdict") is True else
                                 "no backdoor found" if result.get("verdict") is False else
                                 "no verdict")
    if result.get("status") and str(result["status"]) not in title:
        title += f" ({result['status']})"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def write_report(result: Mapping, images: Mapping[str, np.ndarray] | None,
                 out_dir: str | Path, overwrite: bool = False, embed: bool = True) -> Path:
    """Write the HTML report of a scan into ``out_dir``; returns the path of ``index.html``.

    ``result``: the JSON-safe scan result (``docs/report-schema.md``); ``images``: uint8
    ``benign``/``reversed``/``residual`` (N×H×W×C) and float ``attention`` (H×W in [0, 1]),
    each optional. ``embed`` puts the pictures into the page (else it links ``img/``).
    An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    if not isinstance(result, Mapping):
        raise DrmguardError(f"the scan result must be a dict, got {type(result).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DrmguardError(f"report path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DrmguardError(f"report directory {out} already exists and is not empty; choose "
                            "another path")
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    result.setdefault("schema", SCHEMA)
    page = render_html(result, images, _Assets(out, embed))
    (out / "result.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def write_scan_report(scan_result, out_dir: str | Path, extra: Mapping | None = None,
                      overwrite: bool = False, embed: bool = True) -> Path:
    """:func:`write_report` for a DRMGuard ``ScanResult`` (its ``to_dict()`` and pictures);
    ``extra`` adds keys such as ``model`` and ``data`` to the result."""
    images = {"benign": getattr(scan_result, "benign_images", None),
              "reversed": getattr(scan_result, "reversed_images", None),
              "residual": getattr(scan_result, "residual_images", None),
              "attention": getattr(scan_result, "attention", None)}
    result = {**dict(extra or {}), **scan_result.to_dict()}
    return write_report(result, {k: v for k, v in images.items() if v is not None}, out_dir,
                        overwrite=overwrite, embed=embed)


def find_chromium() -> str | None:
    """The headless browser used for screenshots, if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1100,
               height: int = 1500, timeout: float = 60.0) -> Path:
    """Render ``html_path`` with headless Chromium into ``png_path`` (no network, no GPU)."""
    browser = find_chromium()
    if browser is None:
        raise DrmguardError("no Chromium found for the screenshot (apt-get install chromium)")
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update",
           "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png}",
           Path(html_path).resolve().as_uri()]
    try:
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DrmguardError(f"Chromium took longer than {timeout:.0f} s") from None
    if not png.exists():
        raise DrmguardError(f"Chromium wrote no screenshot of {html_path}")
    return png
