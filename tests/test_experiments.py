"""The zoo experiments end to end on the tiny profile: cached models, cached defence runs,
results written with their provenance, and a rerun that trains nothing."""

import json

from drmguard.experiments.identification import plan_identification, run_identification
from drmguard.experiments.mitigation import plan_mitigation, run_mitigation
from drmguard.experiments.zoo import ModelSpec, Zoo


def test_identification_and_mitigation_tiny(tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "results"
    plan = plan_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache))
    assert [w["model"] for w in plan["train"]] == ["gaze/benign/seed0", "gaze/badnets/seed0"]
    assert len(plan["detect"]) == 2 and plan["unestimated"] == 4  # an empty cache knows no times
    rec = run_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache), str(out),
                             progress=False)
    done = plan_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache))
    assert done["train"] == [] and done["detect"] == [] and done["cached"]["runs"] == 2
    more = plan_identification("gaze", ["badnets"], 2, 1, "tiny", ["drmguard"], str(cache))
    assert [w["model"] for w in more["train"]] == ["gaze/benign/seed1"]
    assert more["unestimated"] == 0 and more["estimated_seconds"] > 0  # seed 0's recorded times
    # a new attack: its training is not timed, its scan is (by the task's recorded scans)
    other = plan_identification("gaze", ["blend"], 1, 1, "tiny", ["drmguard"], str(cache))
    assert [w["model"] for w in other["train"]] == ["gaze/blend/seed0"]
    assert other["train"][0]["seconds"] is None and other["detect"][0]["seconds"] > 0
    assert {r["attack"] for r in rec["models"]} == {None, "badnets"}
    s = rec["summary"][0]
    assert s["TP"] + s["FP"] + s["FN"] + s["TN"] + s["not_implanted"] == 2
    bd = [r for r in rec["models"] if r["attack"] == "badnets"][0]  # one backdoored model
    assert bd["implanted"] in (True, False) and bd["CTE"] > 0  # measured on a fresh zoo
    assert s["not_implanted"] == (0 if bd["implanted"] else 1)
    # --plan's implant outlook: how many alike cached models (any seed) implanted
    assert plan["implant"] == [{"models": "gaze/badnets", "seeds": 1, "implanted": 0,
                                "measured": 0}]
    assert more["implant"] == [{"models": "gaze/badnets", "seeds": 1,
                                "implanted": int(bd["implanted"]), "measured": 1}]
    from drmguard.attacks.badnets import BadNets

    with monkeypatch.context() as m:  # other defaults: the cached model is not alike any more
        m.setattr(BadNets, "defaults", {**BadNets.defaults, "rate": 0.3})
        stale = plan_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache))
        assert stale["implant"][0]["measured"] == 0
    assert bd["target_error"] is not None
    assert s["target_error_mean"] == (bd["target_error"] if bd["implanted"] else None)
    assert bd["real_trigger_R"] > 0 and 0 <= bd["real_trigger_collapse"]  # the attack's trigger
    assert [r["real_trigger_R"] for r in rec["models"] if r["attack"] is None] == [None]
    saved = json.loads((out / "identification-gaze-tiny.json").read_text())
    assert saved["provenance"]["commit"] and saved["summary"] == rec["summary"]
    assert "| defence |" in (out / "identification-gaze-tiny.md").read_text()
    zoo = Zoo(str(cache), progress=False)
    assert zoo.has_model(ModelSpec("gaze", "tiny", "badnets", 0))
    # a rerun reuses the cached models and detections: identical records
    again = run_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache),
                               str(out), progress=False)
    assert [r["score"] for r in again["models"]] == [r["score"] for r in rec["models"]]
    # DRMGuard's mitigation reuses the identification scan kept in the zoo (trigger file beside
    # the detection) and gives what scanning again gives
    triggers = sorted(cache.glob("runs/*/detect-drmguard-*.trigger.safetensors"))
    assert len(triggers) == 2
    todo = plan_mitigation("gaze", ["badnets"], {"badnets": 1}, "tiny", ["drmguard", "ft"],
                           str(cache))
    assert todo["train"] == [] and [(w["model"], w["defense"]) for w in todo["mitigate"]] == [
        ("gaze/badnets/seed0", "drmguard"), ("gaze/badnets/seed0", "ft")]
    assert todo["unestimated"] == 2  # no mitigation of this kind recorded yet
    mit = run_mitigation("gaze", ["badnets"], 1, "tiny", ["drmguard", "ft"], str(cache), str(out),
                         progress=False)
    assert plan_mitigation("gaze", ["badnets"], 1, "tiny", ["drmguard", "ft"],
                           str(cache))["cached"] == {"models": 1, "runs": 2}
    methods = {r["method"] for r in mit["models"]}
    assert methods == {"undefended", "drmguard", "ft"}
    assert (out / "mitigation-gaze-tiny.md").exists()
    (rec_file,) = cache.glob("runs/*/mitigate-drmguard-*.json")
    assert json.loads(rec_file.read_text())["info"]["scan_reused"] is True
    for t in triggers:
        t.unlink()
    rec_file.unlink()
    rescanned = run_mitigation("gaze", ["badnets"], 1, "tiny", ["drmguard"], str(cache), str(out),
                               progress=False)
    assert json.loads(rec_file.read_text())["info"]["scan_reused"] is False
    pick = [(r["AE"], r["DAE"]) for r in mit["models"] if r["method"] == "drmguard"]
    assert pick == [(r["AE"], r["DAE"]) for r in rescanned["models"] if r["method"] == "drmguard"]


def test_zoo_keys_follow_the_resolved_defaults(monkeypatch):
    """A change of a profile's schedule, an attack's default or the generator's version must
    retrain instead of reusing a stale cached model."""
    from dataclasses import replace

    from drmguard import profiles
    from drmguard.attacks.badnets import BadNets
    from drmguard.data import synthetic

    spec = ModelSpec("gaze", "tiny", "badnets", 0)
    key, benign_key = spec.key(), ModelSpec("gaze", "tiny").key()
    assert key != benign_key and key == ModelSpec("gaze", "tiny", "badnets", 0).key()
    tiny = profiles.PROFILES["tiny"]
    monkeypatch.setitem(profiles.PROFILES, "tiny", replace(tiny, n_samples=tiny.n_samples + 8))
    assert spec.key() != key
    monkeypatch.setitem(profiles.PROFILES, "tiny", tiny)
    monkeypatch.setattr(BadNets, "defaults", {**BadNets.defaults, "rate": 0.2})
    assert spec.key() != key and ModelSpec("gaze", "tiny").key() == benign_key
    monkeypatch.setattr(BadNets, "defaults", {**BadNets.defaults, "rate": 0.1})
    assert spec.key() == key
    monkeypatch.setattr(synthetic, "SYNTHETIC_VERSION", synthetic.SYNTHETIC_VERSION + 1)
    assert spec.key() != key and ModelSpec("gaze", "tiny").key() != benign_key


def test_defence_runs_are_cached_by_resolved_config(tmp_path, monkeypatch):
    from drmguard.defenses.base import get_detector, resolved_config
    from drmguard.defenses.drmguard import config as dcfg

    det = get_detector("drmguard", "tiny", "gaze")
    before = resolved_config(det, "gaze")
    assert before["l1_weight"] == 3 * 224 * 224 and before["task"] == "gaze"
    assert resolved_config(det, "headpose")["lambda3"] == dcfg.TASK_DEFAULTS["headpose"]["lambda3"]
    monkeypatch.setitem(dcfg.PROFILE_DEFAULTS, "tiny", {**dcfg.PROFILE_DEFAULTS["tiny"],
                                                        "steps": 31})
    assert resolved_config(get_detector("drmguard", "tiny", "gaze"), "gaze") != before
    assert resolved_config(get_detector("nc", "tiny", "gaze"), "gaze")  # baselines too


def test_per_attack_model_counts():
    from drmguard.experiments.identification import model_specs, parse_attack_counts

    names, counts = parse_attack_counts(["badnets", "wanet:2"], 3)
    assert names == ["badnets", "wanet"] and counts == {"badnets": 3, "wanet": 2}
    specs = model_specs("gaze", "tiny", names, 1, counts)
    assert [(s.attack, s.seed) for s in specs] == [
        (None, 0), ("badnets", 0), ("badnets", 1), ("badnets", 2), ("wanet", 0), ("wanet", 1)]


def test_markdown_cells_escape_pipes():
    from drmguard.experiments.results import md_table

    table = md_table(["variant", "AUC"], [["|D_b| = 100", 1.0]])
    assert table.splitlines()[2] == "| \\|D_b\\| = 100 | 1.000 |"


def test_runs_record_their_code_and_rescan_recomputes_others(tmp_path, monkeypatch):
    import pytest

    import drmguard.experiments.results as results_mod
    import drmguard.experiments.zoo as zoo_mod
    from drmguard.experiments.identification import saved_scan
    from drmguard.utils import code_digest

    cache, out = str(tmp_path / "cache"), tmp_path / "results"
    args = ("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], cache)
    first = run_identification(*args, str(out), progress=False)
    now = code_digest()
    assert {m["code"] for m in first["models"]} == {now}
    md = (out / "identification-gaze-tiny.md").read_text()
    assert f"Runs: 2 of 2 made by this code (`{now}`)" in md and "earlier code" not in md

    later = "0123456789ab"  # the package's code changes
    monkeypatch.setattr(zoo_mod, "code_digest", lambda: later)
    monkeypatch.setattr(results_mod, "code_digest", lambda: later)
    reused = run_identification(*args, str(out), progress=False)
    assert {m["code"] for m in reused["models"]} == {now}  # the cache is reused as it was ...
    assert "2 by earlier code" in (out / "identification-gaze-tiny.md").read_text()  # ... visibly
    spec = ModelSpec("gaze", "tiny", "badnets", 0)
    model, _, _ = Zoo(cache).model(spec)
    assert saved_scan(Zoo(cache), spec, model, {}) is not None
    assert saved_scan(Zoo(cache, rescan=True), spec, model, {}) is None  # a stale trigger

    plan = plan_identification(*args, rescan=True)
    assert plan["train"] == [] and len(plan["detect"]) == 2
    redone = run_identification(*args, str(out), progress=False, rescan=True)
    assert {m["code"] for m in redone["models"]} == {later}
    assert [m["score"] for m in redone["models"]] == pytest.approx(
        [m["score"] for m in first["models"]])  # same code in fact: same numbers
    assert plan_identification(*args, rescan=True)["detect"] == []
    assert "Runs: 2 of 2 made by this code" in (out / "identification-gaze-tiny.md").read_text()


def test_trigger_response_tiny(tmp_path):
    """The diagnostic on development seeds: routes measured for backdoored models and benign
    controls, the identity (a = 0) leaves everything untouched, full strength is the real
    trigger, and the cheapest collapse is read off the curve."""
    from drmguard.experiments.trigger_response import (FAMILIES, STRENGTHS, cheapest, collapse_at,
                                                       run_trigger_response)

    cache, out = tmp_path / "cache", tmp_path / "results"
    rec = run_trigger_response("gaze", ["badnets", "wanet"], 1, 1, "tiny", first_seed=100,
                               cache_dir=str(cache), out_dir=str(out), progress=False)
    assert [(m["model"], m["trigger_of"]) for m in rec["models"]] == [
        ("gaze/badnets/seed100", "gaze/badnets/seed100"),
        ("gaze/benign/seed100", "gaze/badnets/seed100"),
        ("gaze/wanet/seed100", "gaze/wanet/seed100"),
        ("gaze/benign/seed100", "gaze/wanet/seed100")]
    for m in rec["models"]:
        assert len(m["rows"]) == len(FAMILIES) * len(STRENGTHS)
        for row in m["rows"]:
            if row["strength"] == 0:
                assert row["R"] < 1e-6 and abs(row["collapse_ratio"] - 1) < 1e-4  # (warp: float)
                assert abs(row["objective"] - rec["identity_objective"]) < 0.01
        rs = [r["R"] for r in m["rows"] if r["family"] == "fade"]
        assert rs == sorted(rs) and rs[-1] > 0  # a fade costs more as it strengthens
    bd = rec["models"][0]
    # at full strength the strength route *is* the real trigger (a patch: the fade is too)
    full = {r["family"]: r for r in bd["rows"] if r["strength"] == 1.0}
    assert full["strength"]["R"] == full["fade"]["R"] > full["mtr"]["R"] > 0
    assert (out / "trigger-response-gaze-tiny.md").exists()
    assert (out / "trigger-response-gaze-tiny.png").stat().st_size > 0
    assert {(s["attack"], s["family"], s["group"]) for s in rec["summary"]} == {
        (a, f, g) for a in ("badnets", "wanet") for f in FAMILIES for g in ("backdoored", "benign")}
    # the curve readers on a hand-made curve
    rows = [{"family": "fade", "R": r, "collapse_ratio": c} for r, c in
            ((0.0, 1.0), (0.01, 0.5), (0.02, 0.1), (0.04, 0.05))]
    assert cheapest(rows, "fade")["R"] == 0.02 and cheapest(rows, "fade", 0.01) is None
    assert abs(collapse_at(rows, "fade", 0.015) - 0.3) < 1e-9
    assert collapse_at(rows, "fade", 0.05) is None
    # a rerun reads the cache
    again = run_trigger_response("gaze", ["badnets", "wanet"], 1, 1, "tiny", first_seed=100,
                                 cache_dir=str(cache), out_dir=str(out), progress=False)
    assert again["models"] == rec["models"]


def test_models_whose_attack_did_not_implant_are_no_positives():
    from drmguard.experiments.identification import implant_status, summarise

    def rec(attack, score, implanted):
        return {"defense": "drmguard", "attack": attack, "score": score, "flagged": score > 0,
                "implanted": implanted, "target_error": None}

    records = [rec(None, -1.0, None), rec(None, -0.9, None),
               rec("wanet", 0.5, True), rec("wanet", -2.0, False), rec("wanet", -0.5, None)]
    (s,) = summarise(records, ["drmguard"], ["wanet"])
    assert s["not_implanted"] == 1 and (s["TP"], s["FN"], s["FP"], s["TN"]) == (1, 1, 0, 2)
    assert s["roc_auc"] == 1.0  # the unimplanted model (lowest score) is left out
    assert implant_status({"AE": 1.0, "CTE": 20.0}, True) is True
    assert implant_status({"AE": 9.0, "CTE": 20.0}, True) is False
    assert implant_status({"AE": 1.0}, True) is None and implant_status({}, False) is None


def test_ablation_variants_offer_the_paper_state_and_the_warp_branch():
    from drmguard.experiments.ablation import variants

    got = {name: ov for name, ov, _ in variants("gaze", "tiny", ["select", "generator"])}
    assert got["report the final state"] == {"select": "final"}  # the default is cheapest_collapse
    assert "report the cheapest collapse state" not in got
    # the default runs a plain and a warp search; the ablation takes them apart, and adds the
    # pattern search (an option) beside them or alone
    alone = {"warp_search": 0, "pattern_search": False}
    assert got["plain search only (no warp, no pattern search)"] == alone
    assert got["plain + pattern search"] == {"pattern_search": True}
    assert "no pattern search" not in got and "no warp search" not in got  # = plain only
    assert got["warp search only (a 4×4 field alone)"] == {
        **alone, "warp_grid": 4, "warp_only": True, "warp_through_mtr": True,
        "static_pattern": False}
    assert got["pattern search only (P alone)"] == {**alone, "pattern_only": True,
                                                    "static_pattern": False}
    assert got["warp search from a zero field"] == {"warp_init": 0.0}
    from drmguard.defenses.drmguard import default_config

    for _, ov, _ in variants("gaze", "tiny", ["generator"]):  # every variant is a valid config
        default_config("tiny", "gaze", **ov)


def test_attack_table_tiny(tmp_path):
    """N seeds per attack and M benign models: one row per model, the implanted counts are
    metrics.implanted on the rows, every trigger is tried on every benign model, the plan
    counts the models and runs, and a rerun computes nothing."""
    from drmguard.experiments.attack_table import plan_attacks, run
    from drmguard.metrics import IMPLANT_FRACTION, implanted

    cache, out = str(tmp_path / "cache"), tmp_path / "out"
    attacks = ["badnets", "multi_wanet"]
    plan = plan_attacks("gaze", "tiny", attacks, 2, 2, cache_dir=cache)
    assert [w["model"] for w in plan["train"]] == [
        "gaze/benign/seed0", "gaze/benign/seed1", "gaze/badnets/seed0", "gaze/badnets/seed1",
        "gaze/multi_wanet/seed0", "gaze/multi_wanet/seed1"]
    assert len(plan["attack"]) == 6 + 4 * 2  # attack metrics per model, 4 triggers × 2 benign
    rec = run("gaze", "tiny", attacks, n_seeds=2, n_benign=2, out_dir=str(out), progress=False,
              cache_dir=cache)
    done = plan_attacks("gaze", "tiny", attacks, 2, 2, cache_dir=cache)
    assert done["train"] == [] and done["attack"] == [] and done["cached"] == {"models": 6,
                                                                               "runs": 14}
    rows = rec["models"]
    assert [(r["attack"], r["seed"]) for r in rows] == [
        (None, 0), (None, 1), ("badnets", 0), ("badnets", 1), ("multi_wanet", 0),
        ("multi_wanet", 1)]
    for s in rec["summary"]:
        mine = [r for r in rows if r["attack"] == s["attack"]]
        def metrics(r):
            if isinstance(r["AE"], list):
                return {"AE_per_target": r["AE"], "CTE_per_target": r["CTE"], "AE": r["AE"][0],
                        "CTE": r["CTE"][0]}
            return r
        assert s["n"] == 2 and s["implanted"] == sum(implanted(metrics(r)) for r in mine)
        assert [r["implanted"] for r in mine] == [implanted(metrics(r)) for r in mine]
        assert s["not_implanted_seeds"] == [r["seed"] for r in mine if not r["implanted"]]
        assert s["key_pairs"] == 4 and all(len(r["key"]) == 2 for r in mine)
        pairs = [p for r in mine for p in r["key"]]
        assert s["key_min_variance_ratio"] == min(p["variance_ratio"] for p in pairs)
        assert s["key"] == all(p["variance_ratio"] >= 0.8 and p["error_ratio"] <= 1.5
                               for p in pairs)
        assert s["options"] and "seed" not in s["options"]
    assert isinstance(rows[4]["AE"], list) and len(rows[4]["AE"]) == 2  # per target
    md = (out / "attacks-gaze-tiny.md").read_text()
    assert f"AE < {IMPLANT_FRACTION:g} · CTE" in md and "| badnets |" in md
    assert "### benign" in md and "Commit:" in md and "effective" not in md
    saved = json.loads((out / "attacks-gaze-tiny.json").read_text())
    assert saved["summary"] == rec["summary"] and saved["implant_fraction"] == IMPLANT_FRACTION
    keys = sorted((tmp_path / "cache").glob("runs/*/attack-key-*.json"))
    assert len(keys) == 8
    stamps = [k.stat().st_mtime_ns for k in keys]
    again = run("gaze", "tiny", attacks, n_seeds=2, n_benign=2, out_dir=str(out),
                progress=False, cache_dir=cache, name="attacks-gaze-tiny-again")
    assert again["summary"] == rec["summary"]
    assert [k.stat().st_mtime_ns for k in keys] == stamps  # the pairs came from the cache
    assert json.loads((out / "attacks-gaze-tiny-again.json").read_text())["summary"] == \
        rec["summary"]  # written under the name given


def test_key_column_tells_a_key_from_damage(tmp_path):
    """A blend that replaces the image by its noise key collapses a benign model's outputs
    (no key); a nearly invisible one leaves them as they were (ratios ≈ 1, a key)."""
    import torch

    from drmguard.attacks import make_attack
    from drmguard.experiments.attack_table import is_key, trigger_on_model
    from drmguard.tasks import get_task

    spec = ModelSpec("gaze", "tiny", None, 0)
    zoo = Zoo(str(tmp_path / "cache"), progress=False)
    model = zoo.model(spec)[0]
    test = zoo.splits(spec).test
    x, y = test.tensors()

    def blend(alpha):
        att = make_attack("blend", torch.zeros(2), task="gaze", image_size=test.image_size,
                          channels=test.channels, seed=0, profile="tiny", alpha=alpha)
        return trigger_on_model(model, att, x, y, get_task("gaze"))

    damage, faint = blend(0.95), blend(1e-3)
    assert damage["variance_ratio"] < 0.1 and not is_key(damage)
    assert abs(faint["variance_ratio"] - 1) < 0.05 and abs(faint["error_ratio"] - 1) < 0.05
    assert is_key(faint)
    assert faint["clean_error"] == damage["clean_error"] > 0
    # the error bar alone also decides: outputs as spread as before but far from the truth
    assert not is_key({"variance_ratio": 1.0, "error_ratio": 1.6})
    assert is_key({"variance_ratio": 0.8, "error_ratio": 1.5})


def test_model_keys_ignore_the_profile_entries_of_other_tasks():
    from dataclasses import replace

    from drmguard.profiles import get_profile
    from drmguard.training import TrainConfig

    prof = get_profile("cpu")
    more = replace(prof, image_size={**prof.image_size, "new_task": 8},
                   train={**prof.train, "new_task": TrainConfig(epochs=1)})
    assert more.for_task("gaze") == prof.for_task("gaze")
    assert more.for_task("new_task") != prof.for_task("new_task")
    assert replace(prof, n_samples=10).for_task("gaze") != prof.for_task("gaze")


def test_identification_rows_name_the_search_a_scan_reported():
    from drmguard.experiments.identification import reported_search

    two = {"restarts": [{"warp_grid": 0}, {"warp_grid": 4}]}
    assert reported_search({**two, "chosen_restart": 1}) == "warp"
    assert reported_search({**two, "chosen_restart": 0}) == "plain"
    three = {"restarts": [{"warp_grid": 0}, {"warp_grid": 0}, {"warp_grid": 4}]}
    assert reported_search({**three, "chosen_restart": 1}) == "plain 2"
    pattern = {"restarts": [{"warp_grid": 0}, {"warp_grid": 4}, {"warp_grid": 0,
                                                                 "pattern_only": True}]}
    assert reported_search({**pattern, "chosen_restart": 2}) == "pattern"
    assert reported_search({**pattern, "chosen_restart": 0}) == "plain"
    assert reported_search({"score": 1.0}) is None  # a baseline's details


def test_stability_counts_the_verdicts_that_flip(tmp_path):
    import torch

    from drmguard.experiments import stability
    from drmguard.experiments.stability import run_stability

    cache, out = tmp_path / "cache", tmp_path / "results"
    n = torch.get_num_threads()
    rec = run_stability("gaze", ["badnets"], 1, 1, "tiny", seeds=[1], threads=[n],
                        cache_dir=str(cache), out_dir=str(out), progress=False)
    assert [v[0] for v in rec["variants"]] == ["reference (seed 0)", "seed 1, 1 thread",
                                               f"seed 0, {n} thread{'' if n == 1 else 's'}"]
    # the reference is the identification table's own scan (same cache entry)
    ident = run_identification("gaze", ["badnets"], 1, 1, "tiny", ["drmguard"], str(cache),
                               str(out), progress=False)
    assert [m["scores"][0] for m in rec["models"]] == [r["score"] for r in ident["models"]]
    # seed 0 pinned to the thread count the reference ran at: the same search, bit for bit
    assert all(m["scores"][2] == m["scores"][0] and m["verdicts"][2] == m["verdicts"][0]
               for m in rec["models"])
    assert all(r["threads"] == n for r in ident["models"])
    # another seed is another search; flips are the verdicts that differ from the reference
    assert any(m["scores"][1] != m["scores"][0] for m in rec["models"])
    assert rec["total_flips"] == sum(m["verdicts"][1] != m["verdicts"][0] for m in rec["models"])
    assert (out / "stability-gaze-tiny.md").exists()
    assert len(list((out / "stability-runs").glob("stability-gaze-tiny-*.json"))) == 3
    # flips are counted against the reference, per model
    fake = [{"models": [{"model": "a", "attack": None, "defense": "drmguard", "flagged": v,
                         "score": 0.0}]} for v in (False, True, False)]
    assert stability.flips(fake)[0]["flips"] == 1


def test_architectures_summary_counts_implanted_models_only():
    """The summary's mitigation means skip the models whose attack did not implant and list
    them; the identification counts come from the architecture's own summary."""
    from drmguard.experiments.architectures import summary_rows, to_markdown

    ident = {"summary": [{"attack": "badnets", "TP": 1, "FP": 0, "FN": 0, "TN": 1,
                          "accuracy": 1.0, "roc_auc": 1.0, "not_implanted": 1,
                          "target_error_mean": 2.0}],
             "models": [{"model": "gaze/benign/seed0", "implanted": None},
                        {"model": "gaze/badnets/seed0", "implanted": True},
                        {"model": "gaze/badnets/seed1", "implanted": False}]}
    mit = {"models": [{"model": f"gaze/badnets/seed{s}", "attack": "badnets", "method": m,
                       "RE": 3.0, "AE": ae, "DAE": dae}
                      for s, m, ae, dae in ((0, "undefended", 1.0, 20.0),
                                            (0, "drmguard", 15.0, 4.0),
                                            (1, "undefended", 12.0, 9.0),
                                            (1, "drmguard", 13.0, 8.0))]}
    (row,) = summary_rows("mobilenet_v1", ident, mit)
    assert (row["TP"], row["TN"], row["not_implanted"]) == (1, 1, 1)
    assert (row["DAE_before"], row["DAE_after"], row["AE_after"]) == (20.0, 4.0, 15.0)
    assert row["left_out"] == ["gaze/badnets/seed1"]
    md = to_markdown({"task": "gaze", "profile": "tiny", "n_benign": 1, "n_backdoored": 2,
                      "summary": [row]})
    assert "| mobilenet_v1 | badnets | 1 | 0 | 0 | 1 | 1.00 | 1.00 | 2.0 |" in md
    assert md.rstrip().endswith("| seed1 |")


def test_architectures_command_tiny(tmp_path, capsys):
    """One architecture end to end: its own tables, the summary row, and a bad name refused
    before anything is trained."""
    from drmguard.cli import main

    cache, out = tmp_path / "cache", tmp_path / "results"
    args = ["experiment", "architectures", "--profile", "tiny", "--benign", "1",
            "--backdoored", "1", "--attacks", "badnets", "--cache", str(cache), "--out", str(out),
            "-q"]
    assert main([*args, "--archs", "mobilenet_v1,resnet99"]) == 2
    assert "unknown architecture 'resnet99'" in capsys.readouterr().err
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    assert main([*args, "--archs", "small_resnet"]) == 0
    assert f"wrote {out}/architectures-gaze-tiny.md" in capsys.readouterr().out
    rec = json.loads((out / "architectures-gaze-tiny.json").read_text())
    (row,) = rec["summary"]
    assert (row["arch"], row["attack"]) == ("small_resnet", "badnets")
    assert row["TP"] + row["FP"] + row["FN"] + row["TN"] + row["not_implanted"] == 2
    assert (out / "identification-gaze-tiny-small_resnet.md").exists()
    assert (out / "mitigation-gaze-tiny-small_resnet.md").exists()
    assert main([*args, "--archs", "small_resnet", "--plan"]) == 0
    assert "to do: 0 models" in capsys.readouterr().out


def test_plan_implant_outlook_text():
    from drmguard.cli.experiment_cmds import implant_outlook

    assert implant_outlook({"models": "gaze/wanet", "seeds": 10, "implanted": 7,
                            "measured": 10}) == ("7/10 alike cached models implanted → ≈ 7.0 of "
                                                 "10 seeds; 15 seeds for 10 implanted")
    assert "15 seeds" not in implant_outlook({"models": "x", "seeds": 10, "implanted": 0,
                                              "measured": 3})
    assert "unknown" in implant_outlook({"models": "x", "seeds": 4, "implanted": 0,
                                         "measured": 0})
