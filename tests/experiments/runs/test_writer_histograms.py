"""The run writer's histograms: a diverging run's values never stop the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchopt_survey.experiments.runs.writer import RunWriter, inspect
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import karate
from torchopt_survey.experiments.tasks.config import default_config, merge, validate
from torchopt_survey.experiments.tasks.spec import RunSpec


@pytest.fixture
def writer(tmp_path: Path) -> RunWriter:
    cfg = validate(merge(default_config("karate"), {"optimizers": ["sgd"], "models": ["paper"],
                                                    "seeds": [0], "epochs": 2}))
    spec = RunSpec.of(karate.expand(cfg)[0]).normalised()
    opts = RunOptions(logdir=str(tmp_path), deterministic=False)
    return RunWriter(spec, opts, inspect(spec, opts), steps_per_epoch=1)


@pytest.mark.parametrize("values", [
    [1.0, float("nan"), -2.0, float("inf")],   # some values non-finite
    [-3e38, 3e38, 2e25],                       # beyond TensorBoard's default buckets (1e20)
], ids=["nonfinite", "huge"])
def test_histograms_of_a_diverging_run_are_written(writer: RunWriter, values: list[float]
                                                   ) -> None:
    writer._histogram("grad/w", torch.tensor(values), 1)
    writer.tb.flush()
    events = EventAccumulator(str(writer.run_dir)).Reload()
    (histogram,) = events.Histograms("grad/w")
    finite = [v for v in values if abs(v) != float("inf") and v == v]
    assert histogram.histogram_value.num == len(finite)
    assert histogram.histogram_value.max == pytest.approx(max(finite), rel=1e-6)


def test_a_histogram_without_finite_values_is_left_out(writer: RunWriter) -> None:
    writer._histogram("grad/w", torch.full((4,), float("nan")), 1)
    writer.tb.flush()
    assert "grad/w" not in EventAccumulator(str(writer.run_dir)).Reload().Tags()["histograms"]
