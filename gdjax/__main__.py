"""``python -m gdjax`` runs the ``gdjax`` command."""

import sys

from gdjax.cli import main

sys.exit(main())
