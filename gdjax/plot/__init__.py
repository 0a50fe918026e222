"""The textbook's views of a training run, drawn with matplotlib.

Imported lazily (``gd.plot`` on first use; ``import gdjax`` alone does not
import matplotlib). Figures are made with ``matplotlib.figure.Figure``, not
pyplot, so they work under any backend (Agg included) and never open windows.
Every function takes an optional ``ax`` and returns the axes it drew on; save
with ``gd.plot.save(ax, "cost.png")`` (or ``ax.figure.savefig``).

* :func:`losses`: the cost curve of one run against steps, epochs, examples
  or seconds, with a moving average over the noisy mini-batch losses and the
  full-data cost of each epoch as markers.
* :func:`compare`: several runs on one axes (batch, stochastic, mini-batch).
* :func:`history`: the training and evaluation curves of every evaluated
  value (loss, metrics, aux) against epochs, one panel each, the best epoch of
  the monitored value marked (a run, or one member of a sweep).
* :func:`sweep`: the value the members are ranked by (the final loss, or the
  monitored value such as ``eval_acc``) against the learning rate, diverged
  members and the best one marked; :func:`curves`: every member's curve
  coloured by its learning rate; :func:`heatmap`: that value over a
  two-hyperparameter grid (optimizer or loss hyperparameters).
* :func:`study`: a batch-size study's steps and examples to the target and
  best learning rate against batch size, the noise scale and the fitted
  critical batch size marked.
"""

from gdjax.plot._base import moving_average, save
from gdjax.plot.history import history
from gdjax.plot.runs import compare, losses
from gdjax.plot.study import study
from gdjax.plot.sweeps import curves, heatmap, sweep

__all__ = ["compare", "curves", "heatmap", "history", "losses", "moving_average", "save", "study", "sweep"]
