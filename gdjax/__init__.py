"""gdjax: gradient descent in JAX, simple, pure and fast."""

from gdjax import checkpoint, models, problems
from gdjax._caches import clear_caches
from gdjax.data import Batch, DataIterator, IteratorState, full_batch, minibatch, stochastic
from gdjax.fit import FitResult, fit
from gdjax.noise_scale import NoiseScaleInfo, noise_scale
from gdjax.sharpness import SharpnessInfo, sharpness
from gdjax.step import TrainState, init, make_step, masked_mean
from gdjax.study import StudyResult, study
from gdjax.sweep import SweepResult, seed_keys, sweep

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import ``gdjax.plot`` (and so matplotlib) only when it is first used."""
    if name == "plot":
        import importlib

        return importlib.import_module("gdjax.plot")
    raise AttributeError(f"module 'gdjax' has no attribute {name!r}")


__all__ = [
    "Batch",
    "DataIterator",
    "FitResult",
    "IteratorState",
    "NoiseScaleInfo",
    "SharpnessInfo",
    "StudyResult",
    "SweepResult",
    "TrainState",
    "__version__",
    "checkpoint",
    "clear_caches",
    "fit",
    "full_batch",
    "init",
    "make_step",
    "masked_mean",
    "minibatch",
    "models",
    "noise_scale",
    "plot",
    "problems",
    "seed_keys",
    "sharpness",
    "stochastic",
    "study",
    "sweep",
]
