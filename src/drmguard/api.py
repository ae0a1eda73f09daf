"""The top-level Python API (``import drmguard``): the few calls a user needs, each a thin layer
over the modules that do the work. The command line is a shell over these.

    import drmguard

    model, meta = drmguard.load_model("gaze.pt")
    result = drmguard.scan(model, "benign/", task="gaze", profile="cpu", seed=0)
    print(result.status, result.r_score, result.target_estimate)
    drmguard.write_report(result, "report/")
    if result.backdoored:
        cleaned, info = drmguard.mitigate(model, "benign/", prior=result)
        drmguard.save_model(cleaned, "gaze-cleaned/", meta)

``model`` may be a loaded model or anything :func:`load_model` reads (a path); ``data`` a
loaded :class:`~drmguard.data.base.ArrayDataset` or a data spec (a folder with
``labels.csv``, a ``.npz`` file, ``name:PATH``), fitted to the model's input here.
"""

from __future__ import annotations

from pathlib import Path

from .data.base import ArrayDataset
from .errors import DrmguardError, MissingInputSize
from .models.split import RegressionModel
from .tasks import Task


def load_model(path, **options):
    """Any supported model file as ``(RegressionModel, meta)``: a drmguard model directory,
    TorchScript, ONNX, weights with ``arch``, a pickle with ``allow_pickle=True``
    (:func:`drmguard.models.io.load_model` lists the options)."""
    from .models.io import load_model as _load

    return _load(path, **options)


def save_model(model: RegressionModel, out, meta: dict | None = None) -> Path:
    """Save a model as a drmguard model directory (TorchScript weights for a model that came as
    TorchScript, ONNX or a pickle); ``meta`` is the ``meta`` :func:`load_model` returned."""
    from .models.io import model_meta, save_model_any

    return save_model_any(model, out, meta or model_meta(model, "unknown", None))


def load_dataset(spec: str, **options) -> ArrayDataset:
    """Labelled images from a data spec (:func:`drmguard.data.load_dataset`)."""
    from .data import load_dataset as _load

    return _load(spec, **options)


def get_task(name: str, dim: int | None = None, target_names=None) -> Task:
    """A task by name (``gaze``, ``headpose``, ``generic`` with ``dim``)."""
    from .tasks import get_task as _get

    return _get(name, dim, target_names)


def prepare(model, data, task: str | None = None, *, error: str | None = None,
            columns=None, progress: bool = True, min_samples: int = 10, **model_options
            ) -> tuple[RegressionModel, dict, ArrayDataset, Task]:
    """``(model, meta, data fitted to the model, task)`` for a scan or a mitigation.

    A model file that does not record its input size takes the size of the data's images
    (every image of a folder has one size); ``model_options`` go to :func:`load_model`."""
    from .inputs import load_data_for_model, load_labelled
    from .tasks import TASK_NAMES

    if task is not None and task not in TASK_NAMES:
        get_task(task)  # the task registry's "unknown task" error, before any loading
    if isinstance(model, RegressionModel):
        if model_options:
            raise DrmguardError(f"{', '.join(sorted(model_options))} apply to a model file, "
                                "not to a loaded model")
        meta: dict = {}
    else:
        checked_task = task if task in ("gaze", "headpose") else None
        try:
            model, meta = load_model(model, task=checked_task, **model_options)
        except MissingInputSize:
            if not isinstance(data, ArrayDataset):
                data = load_labelled(data, columns, progress)
            h, w = data.image_size
            model, meta = load_model(model, task=checked_task,
                                     **{**model_options, "input_size": (h, w)})
            meta.setdefault("notes", []).insert(
                0, f"the model file does not record its input size: using the data's {h}×{w} "
                   "(pass `input_size` to choose another)")
    ds, t = load_data_for_model(data, model, task, error, columns, meta=meta,
                                progress=progress, min_samples=min_samples, multiple_of=8)
    return model, meta, ds, t


def scan(model, data, task: str | None = None, *, profile: str = "cpu", seed: int = 0,
         progress: bool = True, columns=None, error: str | None = None, model_options=None,
         **options):
    """Scan ``model`` with DRMGuard on the labelled benign ``data``; returns the
    :class:`~drmguard.defenses.drmguard.ScanResult` (``status``, ``r_score``,
    ``target_estimate``, ``to_dict()`` in the documented JSON schema, ``save(...)`` for a later
    mitigation). ``options`` override DRMGuard's settings for the profile (``tau``,
    ``lambda1``, ``steps``, ...)."""
    from .defenses.drmguard import DRMGuard

    model, _, ds, t = prepare(model, data, task, error=error, columns=columns,
                              progress=progress, **(model_options or {}))
    return DRMGuard(profile, t.name, **options).detect(model, ds, t, seed=seed,
                                                       progress=progress).result


def detect(model, data, defence: str = "drmguard", task: str | None = None, *,
           profile: str = "cpu", seed: int = 0, progress: bool = True, columns=None,
           error: str | None = None, model_options=None, **options):
    """Any registered detector (``drmguard``, ``nc``, ``featurere``) on ``model``: a
    :class:`~drmguard.defenses.base.Detection` (higher score = more suspicious)."""
    from .defenses import get_detector

    model, _, ds, t = prepare(model, data, task, error=error, columns=columns,
                              progress=progress, **(model_options or {}))
    return get_detector(defence, profile, t.name, **options).detect(model, ds, t, seed=seed,
                                                                    progress=progress)


def mitigate(model, data, task: str | None = None, *, defence: str = "drmguard",
             profile: str = "cpu", seed: int = 0, prior=None, progress: bool = True,
             columns=None, error: str | None = None, model_options=None, **options):
    """A repaired copy of ``model`` and a record of the repair, by any registered mitigation
    (``drmguard``, ``ft``, ``fp``, ``anp``). DRMGuard reuses ``prior`` (a scan result, from
    :func:`scan` or ``ScanResult.load(file)``, or a Detection) instead of scanning again."""
    from .defenses import get_mitigator

    model, _, ds, t = prepare(model, data, task, error=error, columns=columns,
                              progress=progress, **(model_options or {}))
    return get_mitigator(defence, profile, t.name, **options).mitigate(
        model, ds, t, seed=seed, progress=progress, prior=prior)


def write_report(result, out_dir, extra: dict | None = None, overwrite: bool = False) -> Path:
    """The HTML report of a scan result into ``out_dir``; returns the path of ``index.html``."""
    from .report import write_scan_report

    return write_scan_report(result, out_dir, extra=extra, overwrite=overwrite)


__all__ = ["load_model", "save_model", "load_dataset", "get_task", "prepare", "scan", "detect",
           "mitigate", "write_report"]
