"""The surveys' first-order optimizers as torch.optim drop-ins (one module per method)."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW, AMSGrad
from .adamax import Adamax
from .core.base import StateSpec, SurveyOptimizer
from .nadam import NAdam
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
    "StateSpec",
    "SurveyOptimizer",
]
