"""gdjax: gradient descent in JAX, simple, pure and fast."""

from gdjax import models, problems
from gdjax.data import Batch, DataIterator, IteratorState, full_batch, minibatch, stochastic
from gdjax.loop import FitResult, fit
from gdjax.step import TrainState, init, make_step

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DataIterator",
    "FitResult",
    "IteratorState",
    "TrainState",
    "__version__",
    "fit",
    "full_batch",
    "init",
    "make_step",
    "minibatch",
    "models",
    "problems",
    "stochastic",
]
