"""The surveys' experiments: MNIST MLP and Karate Club link prediction for every optimizer.

Run ``python -m torchopt_survey.experiments --help``. Needs the ``experiments`` extra
(torchvision, torch-geometric, tensorboard, pyyaml, tqdm, matplotlib).

The public surface (``__all__`` here and in :mod:`.api`, :mod:`.cli`, :mod:`.tasks.protocol`):
the :class:`Task` protocol and its helper classes (a task of your own is built from them), the
typed run spec (:class:`RunSpec`), the optimizer registry, the commands as Python functions
(``api.run``, ``api.sweep``, ``api.report``) and the command-line parser (``cli.build_parser``,
``cli.main``). The rest is the harness's own.

Layers, each importing only from those below it (checked by ``lint-imports``): :mod:`.cli`,
:mod:`.sweep`, :mod:`.report`, :mod:`.runs`, :mod:`.tasks`, :mod:`.runtime`.
"""

from .tasks.optimizers import OPTIMIZER_NAMES, OPTIMIZERS, build_optimizer, resolve_optimizer_names
from .tasks.protocol import Capabilities, Claim, Defaults, Metric, Task, TaskData
from .tasks.spec import RunSpec, SweepPoint

__all__ = [
    "Capabilities",
    "Claim",
    "Defaults",
    "Metric",
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "RunSpec",
    "SweepPoint",
    "Task",
    "TaskData",
    "build_optimizer",
    "resolve_optimizer_names",
]
