"""``python -m gdjax`` runs the ``gdjax`` command."""

from gdjax.cli import entry

entry()
