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
* :func:`sweep`: final loss against the learning rate, diverged members and
  the best one marked; :func:`curves`: every member's curve coloured by its
  learning rate; :func:`heatmap`: final loss over a two-hyperparameter grid.
"""

from gdjax.plot._base import moving_average, save
from gdjax.plot.runs import compare, losses
from gdjax.plot.sweeps import curves, heatmap, sweep

__all__ = ["compare", "curves", "heatmap", "losses", "moving_average", "save", "sweep"]
