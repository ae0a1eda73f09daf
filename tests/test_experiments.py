"""The zoo experiments end to end on the tiny profile: cached models, cached defence runs,
results written with their provenance, and a rerun that trains nothing."""

import json

from drmguard.experiments.identification import run_identification
from drmguard.experiments.mitigation import run_mitigation
from drmguard.experiments.zoo import ModelSpec, Zoo


def test_identification_and_mitigation_tiny(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "results"
    rec = run_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache), str(out),
                             progress=False)
    assert {r["attack"] for r in rec["models"]} == {None, "badnets"}
    s = rec["summary"][0]
    assert s["TP"] + s["FP"] + s["FN"] + s["TN"] == 2
    saved = json.loads((out / "identification-gaze-tiny.json").read_text())
    assert saved["provenance"]["commit"] and saved["summary"] == rec["summary"]
    assert "| defence |" in (out / "identification-gaze-tiny.md").read_text()
    zoo = Zoo(str(cache), progress=False)
    assert zoo.has_model(ModelSpec("gaze", "tiny", "badnets", 0))
    # a rerun reuses the cached models and detections: identical records
    again = run_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache),
                               str(out), progress=False)
    assert [r["score"] for r in again["models"]] == [r["score"] for r in rec["models"]]
    mit = run_mitigation("gaze", ["badnets"], 1, "tiny", ["drmguard", "ft"], str(cache), str(out),
                         progress=False)
    methods = {r["method"] for r in mit["models"]}
    assert methods == {"undefended", "drmguard", "ft"}
    assert (out / "mitigation-gaze-tiny.md").exists()
