"""The surveys' experiments: MNIST MLP and Karate Club link prediction for every optimizer.

Run ``python -m torchopt_survey.experiments --help``. Needs the ``experiments`` extra
(torchvision, torch-geometric, tensorboard, pyyaml, tqdm, matplotlib).

Layers, each importing only from those below it (checked by ``lint-imports``): :mod:`.cli`,
:mod:`.sweep`, :mod:`.report`, :mod:`.runs`, :mod:`.tasks`, :mod:`.runtime`.
"""

from .tasks.optimizers import OPTIMIZER_NAMES, OPTIMIZERS, build_optimizer, resolve_optimizer_names

__all__ = ["OPTIMIZERS", "OPTIMIZER_NAMES", "build_optimizer", "resolve_optimizer_names"]
