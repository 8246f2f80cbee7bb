"""The surveys' first-order optimizers as torch.optim drop-ins (one module per method)."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW, AMSGrad
from .adamax import Adamax
from .conjugate_gradient import ConjugateGradient
from .core.base import StateSpec, SurveyOptimizer
from .nadam import NAdam
from .newton import Newton, NewtonCG
from .rmsprop import RMSprop
from .sgd import NAG, SGD, Momentum

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
    "StateSpec",
    "SurveyOptimizer",
]
