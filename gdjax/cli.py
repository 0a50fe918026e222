"""The ``gdjax`` command line.

``gdjax demo`` trains the same linear regression by batch, stochastic and
mini-batch gradient descent on built-in data and prints what each cost.
"""

from __future__ import annotations

import argparse
import sys

from gdjax import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdjax", description="Gradient descent in JAX, compiled and vectorised.")
    parser.add_argument("--version", action="version", version=f"gdjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="compare batch, stochastic and mini-batch gradient descent on built-in data")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, the initial parameters and the order")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from gdjax.demo import format_table, run_variants

        prob, runs = run_variants(seed=args.seed)
        print("Linear regression, 4096 examples, 16 features: the same problem three ways.\n")
        print(format_table(prob, runs))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
