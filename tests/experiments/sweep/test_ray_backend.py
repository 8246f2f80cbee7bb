"""``sweep --backend ray`` (Ray Tune trials).

* a sweep on a local Ray instance writes the same tables as ``--backend local`` (vectorised
  groups as trials; deterministic CPU runs at one thread: identical metrics), and nothing of
  Ray's under the logdir;
* ``--resume`` on Ray skips finished runs (their files untouched), continues an interrupted one
  from its checkpoint, and a run that crashes is a failed row with its error, the others
  unaffected;
* without Ray installed ``--backend ray`` exits 2 naming ``pip install -e ".[ray]"``, before
  anything runs; a trial that dies marks its runs failed with the trial's error.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from torchopt_survey.experiments import cli

#: a sweep of 2 optimizers x 2 learning rates, 1 seed: 2 vectorised groups, 2 Ray trials
SWEEP = ["sweep", "--experiment", "mnist", "--optimizers", "sgd", "adam", "--lr-grid",
         "1e-2:1e-1:2", "--seeds", "0", "--epochs", "1", "--set", "hidden=8", "--set",
         "regimes.minibatch.batch_size=8", "--train-subset", "48", "--test-subset", "40",
         "--val-split", "0.25", "--device", "cpu", "--threads", "1", "--workers", "2",
         "--quiet"]
#: the sweep's tables without times (wall-clock columns differ from run to run)
TABLES = ("sweep_runs.md", "sweep_settings.csv", "sweep_best.csv", "sweep_best.md")
#: what Ray Tune writes into its own trial folders
RAY_FILES = ("params.pkl", "progress.csv", "tuner.pkl", "experiment_state-*.json")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             synthetic_mnist: Callable[[int, int], Path]) -> str:
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE", str(tmp_path / "cache"))  # (Ray's workers too)
    return str(synthetic_mnist(64, 40))


@pytest.fixture
def ray_guard() -> Iterator[None]:
    """At most 240 s, and Ray shut down whatever happens (the command shuts down its own
    instance; this is the backstop)."""
    ray = pytest.importorskip("ray", reason="Ray Tune not installed (pip install -e '.[ray]')")

    def expire(*_: Any) -> None:
        raise TimeoutError("Ray sweep test over 240 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(240)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if ray.is_initialized():
            ray.shutdown()


def _rows(logdir: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((logdir / "sweep" / "sweep.json").read_text())["rows"]
    return {r["run_id"]: r for r in rows}


def _stamps(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}


def test_ray_sweep_equals_local_resumes_and_marks_failures(
        tmp_path: Path, data_dir: str, ray_guard: None) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    common = [*SWEEP, "--data-dir", data_dir]
    assert cli.main([*common, "--logdir", str(local)]) == 0
    assert cli.main([*common, "--logdir", str(on_ray), "--backend", "ray"]) == 0
    for name in TABLES:  # the same runs, metrics and tuned choice
        assert (on_ray / "sweep" / name).read_text() == (local / "sweep" / name).read_text()
    ray_rows, local_rows = _rows(on_ray), _rows(local)
    assert list(ray_rows) == list(local_rows) and len(ray_rows) == 4
    for rid, row in ray_rows.items():
        assert row["status"] == "ok" and row["vectorized"] == 2, rid
        for key in ("val", "test", "val_curve"):
            assert row[key] == pytest.approx(local_rows[rid][key], rel=1e-9), (rid, key)
        assert row["steps_to_target"] == local_rows[rid]["steps_to_target"], rid
    timing = json.loads((on_ray / "sweep" / "sweep.json").read_text())["timing"]
    assert timing["ray_trials"] == 2 and timing["vectorized_programs"] == 2
    # nothing of Ray's in the logdir (`report` reads every result.json there)
    assert not [p for pat in RAY_FILES for p in on_ray.rglob(pat)]
    assert cli.main(["report", "--logdir", str(on_ray), "--out", str(tmp_path / "rep"),
                     "--quiet"]) == 0

    # --resume: adam lr=0.01 blocked (a file where its folder goes: it crashes), sgd lr=0.1
    # interrupted after its last checkpoint (no result.json), the other two finished
    ids = list(ray_rows)
    finished = [rid for rid in ids if "lr=0.01/sgd" in rid or "lr=0.1/adam" in rid]
    (blocked,) = [rid for rid in ids if "lr=0.01/adam" in rid]
    (interrupted,) = [rid for rid in ids if "lr=0.1/sgd" in rid]
    shutil.rmtree(on_ray / blocked)
    (on_ray / blocked).write_text("in the way")
    (on_ray / interrupted / "result.json").unlink()
    before = {rid: _stamps(on_ray / rid) for rid in finished}
    assert cli.main([*common, "--logdir", str(on_ray), "--backend", "ray", "--resume"]) == 0
    resumed = _rows(on_ray)
    assert list(resumed) == ids
    for rid in finished:  # skipped: not a file rewritten
        assert _stamps(on_ray / rid) == before[rid], rid
        assert resumed[rid]["test"] == local_rows[rid]["test"]
    assert resumed[blocked]["status"] == "failed"
    assert "FileExistsError" in resumed[blocked]["error"]
    assert ",failed," in (on_ray / "sweep" / "sweep_runs.csv").read_text()
    done = json.loads((on_ray / interrupted / "result.json").read_text())
    assert done["resumed_from_epoch"] == 1 and done["epochs_trained"] == 0
    assert resumed[interrupted]["status"] == "ok"
    assert resumed[interrupted]["test"] == local_rows[interrupted]["test"]


def test_ray_missing_exits_2(tmp_path: Path, data_dir: str, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = cli.main([*SWEEP, "--data-dir", data_dir, "--logdir", str(tmp_path / "runs"),
                     "--backend", "ray"])
    assert code == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.parametrize("extra,needle", [
    (["--ray-address", "auto"], "--ray-address"),  # without --backend ray
    (["--threads", "0"], "--threads"),
])
def test_ray_flags_bad_input_exits_2(tmp_path: Path, data_dir: str, extra: list[str],
                                     needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([*SWEEP, "--data-dir", data_dir, "--logdir", str(tmp_path / "runs"),
                     *extra])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_backend_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*SWEEP, "--backend", "slurm"])
    assert exc.value.code == 2
    assert "--backend" in capsys.readouterr().err


def test_dead_trial_marks_its_runs_failed() -> None:
    """A trial that dies before reporting (worker killed, out of memory): every run of its
    unit is a failed row with the trial's error; a reporting trial's rows pass through; one
    that never ran (Ctrl-C stopped Tune) has none."""
    from torchopt_survey.experiments.sweep.ray_backend import trial_rows

    unit = [{"experiment": "karate", "variant": f"karate-paper-sweep~lr={lr}",
             "optimizer": "sgd", "seed": 0,
             "sweep": {"base": "karate-paper", "setting": {"lr": lr}}} for lr in (0.1, 0.01)]
    rows = trial_rows(unit, {}, RuntimeError("The actor died unexpectedly"))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("actor died" in r["error"] for r in rows)
    assert [r["run_id"] for r in rows] == [f"karate/{u['variant']}/sgd/seed0" for u in unit]
    assert trial_rows(unit, {"rows": json.dumps(rows[:1])}, None) == rows[:1]
    assert trial_rows(unit, {}, None) is None  # never ran: the sweep was stopped
