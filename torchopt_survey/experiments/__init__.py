"""The surveys' experiments: MNIST MLP and Karate Club link prediction for every optimizer.

Run ``python -m torchopt_survey.experiments --help``. Needs the ``experiments`` extra
(torchvision, torch-geometric, tensorboard, pyyaml, tqdm, matplotlib).
"""

from .registry import OPTIMIZER_NAMES, OPTIMIZERS, build_optimizer, resolve_optimizer_names

__all__ = ["OPTIMIZERS", "OPTIMIZER_NAMES", "build_optimizer", "resolve_optimizer_names"]
