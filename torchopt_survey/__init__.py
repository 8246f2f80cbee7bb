"""torchopt_survey: the classic optimizers of two deep-learning optimization surveys as exact,
fast ``torch.optim.Optimizer`` drop-ins, and the surveys' experiments.

>>> import torch, torchopt_survey
>>> model = torch.nn.Linear(4, 2)
>>> opt = torchopt_survey.Adam(model.parameters(), lr=1e-3)   # same as torch.optim.Adam

``compile_step(model, loss_fn, optimizer)`` compiles a whole training step into one program
(see :mod:`torchopt_survey.compiled`).
"""

from importlib import metadata as _metadata

from .compiled import CompiledStep, compile_step
from .optim import (
    NAG,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    AMSGrad,
    ConjugateGradient,
    Momentum,
    NAdam,
    Newton,
    NewtonCG,
    RMSprop,
)


def _installed_version() -> str:
    """The version of the installed distribution; a source tree that is not installed has none."""
    try:
        return _metadata.version("torchopt-survey")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "SGD",
    "Momentum",
    "NAG",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adam",
    "AdamW",
    "AMSGrad",
    "NAdam",
    "Adamax",
    "Newton",
    "NewtonCG",
    "ConjugateGradient",
    "compile_step",
    "CompiledStep",
]
