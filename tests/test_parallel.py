"""Zoo experiments in parallel (experiments/executor.py) on the tiny profile: the same tables
as one-after-another, a killed run that resumes with only what was left, and a model claimed
by two workers trained once."""

from __future__ import annotations

import json
import time
from functools import partial

import pytest

from drmguard.experiments.executor import Executor, Run
from drmguard.experiments.identification import identification_work, run_identification
from drmguard.experiments.results import comparable
from drmguard.experiments.zoo import ModelSpec, Zoo

# a 2 benign + 2 BadNets zoo, DRMGuard (short search) and NC-R on every model
ZOO = dict(task="gaze", attacks=["badnets"], n_benign=2, n_backdoored=2, profile="tiny",
           defenses=["drmguard", "nc"], overrides={"steps": 5, "pretrain_steps": 5})


def identification(base, executor=None) -> dict:
    run_identification(**ZOO, cache_dir=str(base / "cache"), out_dir=str(base / "out"),
                       progress=False, executor=executor)
    return json.loads((base / "out" / "identification-gaze-tiny.json").read_text())


def cache_files(cache) -> dict[str, int]:
    """{path: mtime_ns} of the finished models and runs in a cache."""
    files = [*cache.glob("models/*/*"), *cache.glob("runs/*/*.json"),
             *cache.glob("runs/*/*.safetensors")]
    return {str(f.relative_to(cache)): f.stat().st_mtime_ns for f in files}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    base = tmp_path_factory.mktemp("sequential")
    return comparable(identification(base))


def test_two_local_workers_give_the_sequential_results(tmp_path, sequential):
    rec = identification(tmp_path, Executor(2, progress=False))
    assert len(rec["models"]) == 8  # 4 models × 2 defences
    assert comparable(rec) == sequential
    # the parallel phase filled the cache: every model and run, nothing twice
    assert len(list((tmp_path / "cache").glob("models/*/spec.json"))) == 4
    assert len(list((tmp_path / "cache").glob("runs/*/detect-*.json"))) == 8


def test_ray_on_this_machine_gives_the_sequential_results(tmp_path, sequential):
    """Ray is in the test extra (pip install -e ".[test]")."""
    assert comparable(identification(tmp_path, Executor(2, "ray", progress=False))) == sequential


def _killed(**_):
    raise RuntimeError("worker killed")


def test_a_killed_run_resumes_with_only_what_was_left(tmp_path, sequential):
    cache = tmp_path / "cache"
    zoo = Zoo(str(cache), progress=False)
    work = identification_work(ZOO["task"], ZOO["attacks"], ZOO["n_benign"],
                               ZOO["n_backdoored"], ZOO["profile"], ZOO["defenses"],
                               overrides=ZOO["overrides"])
    # the first attempt dies at a run on a model; an earlier stage than its other runs, so those
    # are never started whatever the timing (appended to the same stage, the dying run could come
    # last, after every other run had finished: the test then failed now and then)
    victim = ModelSpec("gaze", "tiny", None, 0)
    work.runs.append(Run(victim, _killed, "detect", "killed", stage=-1))
    with pytest.raises(RuntimeError, match="worker killed"):
        Executor(2, progress=False).run(zoo, work)
    work.runs.pop()
    first = cache_files(cache)
    assert zoo.has_model(victim)
    # leftovers of writers killed half-way: a model directory and a run being written
    (cache / "models" / ".tmp-killed" / "m").mkdir(parents=True)
    key = ModelSpec("gaze", "tiny", None, 1).key()
    (cache / "runs" / key).mkdir(parents=True, exist_ok=True)
    (cache / "runs" / key / ".detect-nc-0-x1y2.tmp").write_text('{"trunc')
    all_models = {s.label() for s in work.specs}
    all_runs = {(r.spec.label(), r.kind, r.name) for r in work.runs}
    done_before = ({s.label() for s in work.specs if zoo.has_model(s)},
                   {(r.spec.label(), r.kind, r.name) for r in work.runs
                    if zoo.has_run(r.spec, r.kind, r.name, r.config)})
    assert done_before[1] < all_runs  # it stopped part-way

    again = Executor(2, progress=False).run(zoo, work)
    assert set(again["trained"]) == all_models - done_before[0]
    assert len(again["runs"]) == len(set(again["runs"]))
    assert set(again["runs"]) == all_runs - done_before[1]  # only what was left
    now = cache_files(cache)
    assert {f: now[f] for f in first} == first  # finished work was not rewritten
    # and the tables are those of one uninterrupted sequential run
    assert Executor(2, progress=False).run(zoo, work) == {"trained": [], "runs": [],
                                                          "seconds": 0.0}
    assert comparable(identification(tmp_path)) == sequential


def test_two_workers_asking_for_one_model_train_it_once(tmp_path, monkeypatch):
    """The claim is an flock on its own open file: two threads block each other exactly as two
    processes (or machines on one shared file system) do."""
    from concurrent.futures import ThreadPoolExecutor

    trained = []
    original = Zoo._train

    def counted(self, spec, final_dir):
        trained.append(spec.label())
        time.sleep(1.0)  # the other worker asks meanwhile
        original(self, spec, final_dir)

    monkeypatch.setattr(Zoo, "_train", counted)
    spec = ModelSpec("gaze", "tiny", None, 0)

    def load(_):
        model, _, _ = Zoo(str(tmp_path / "cache"), progress=False).model(spec)
        return {k: v.sum().item() for k, v in model.state_dict().items()}

    with ThreadPoolExecutor(2) as pool:
        weights = list(pool.map(load, range(2)))
    assert trained == ["gaze/benign/seed0"]
    assert weights[0] == weights[1]  # the waiting worker loaded the one model
    assert list((tmp_path / "cache" / "locks").glob("*.lock"))


def test_mitigation_command_with_two_workers(tmp_path, capsys):
    """The CLI options reach the runner: --workers 2 fills the cache in the parallel phase
    and the table equals the sequential one."""
    from drmguard.cli import main

    def cli(name, *extra):
        args = ["experiment", "mitigation", "--profile", "tiny", "--attacks", "badnets:1",
                "--mitigations", "ft", "--cache", str(tmp_path / name / "cache"),
                "--out", str(tmp_path / name / "out"), "--quiet", *extra]
        assert main(args) == 0
        return comparable(json.loads(
            (tmp_path / name / "out" / "mitigation-gaze-tiny.json").read_text()))

    assert cli("parallel", "--workers", "2") == cli("sequential")


def test_executor_work_stages_and_threads():
    from drmguard.experiments.executor import Work, threads_per_worker
    from drmguard.experiments.mitigation import mitigation_work

    assert threads_per_worker(2, 2) == 1 and threads_per_worker(3, 2) == 1
    assert threads_per_worker(2, 16) == 8
    w = mitigation_work("gaze", ["badnets"], 1, "tiny", ["drmguard", "ft"])
    assert [(r.kind, r.name, r.stage) for r in w.runs] == [
        ("attack", "metrics", 0), ("mitigate", "drmguard", 1), ("mitigate", "ft", 1)]
    assert isinstance(w.runs[1].call, partial) and len((w + w).runs) == 6
    assert Work().specs == [] and Executor(1).sequential and not Executor(2).sequential


@pytest.mark.parametrize("args,models,runs", [
    # per model: attack metrics; per backdoored model: its trigger on each benign model
    (["attacks", "--attacks", "badnets,blend", "--seeds", "2", "--benign", "1"], 5, 5 + 4),
    # per model: attack metrics, the trigger's cost (backdoored), one run per defence
    (["identification", "--attacks", "badnets", "--benign", "1", "--backdoored", "2",
      "--defenses", "drmguard,nc"], 3, 3 + 2 * 4),
    # attack metrics, then the mitigations
    (["mitigation", "--attacks", "badnets:2", "--mitigations", "drmguard,ft"], 2, 2 * 3),
    # two variants (default, without MTR) scan the same two models
    (["ablation", "--attacks", "badnets", "--benign", "1", "--backdoored", "1", "--groups",
      "mtr"], 2, 3 + 2 * 2),
    # per architecture: identification (2 models) and mitigation (the backdoored one)
    (["architectures", "--archs", "small_resnet,mobilenet_v1", "--attacks", "badnets",
      "--benign", "1", "--backdoored", "1"], 4, 2 * (3 + 2 + 1)),
    # the reference and three variants (seeds 1, 2 at 1 thread; seed 0 at 2 threads) scan the
    # same two models; the attack metrics and the trigger's cost are the same runs each time
    (["stability", "--attacks", "badnets", "--benign", "1", "--backdoored", "1"], 2,
     3 + 4 * 2),
    # the diagnostic trains its development models in parallel (its measurement is cheap)
    (["trigger-response", "--attacks", "badnets,blend", "--benign", "2", "--backdoored", "1"],
     4, 0),
])
def test_every_experiment_command_hands_its_whole_zoo_to_the_executor(
        tmp_path, monkeypatch, capsys, args, models, runs):
    """One parallel phase per command, with every model and run of the command in it."""
    from drmguard.cli import main
    from drmguard.errors import DrmguardError

    seen = []

    def record(self, zoo, work):
        seen.append((self.workers, self.progress, work))
        raise DrmguardError("stop here")  # the sequential part is tested elsewhere

    monkeypatch.setattr(Executor, "run", record)
    monkeypatch.chdir(tmp_path)  # `attacks` uses the default cache directory
    assert main(["experiment", *args, "--profile", "tiny", "--workers", "3", "--quiet"]) == 2
    assert "stop here" in capsys.readouterr().err
    ((workers, progress, work),) = seen
    assert (workers, progress) == (3, False)
    assert len({s.key() for s in work.specs}) == models
    assert len({r.ident() for r in work.runs}) == runs
