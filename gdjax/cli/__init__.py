"""The ``gdjax`` command line.

* ``gdjax demo`` trains one linear regression by batch, stochastic and
  mini-batch gradient descent on built-in data, sweeps 64 learning rates,
  prints a table of what each run cost and writes the figures.
* ``gdjax sweep DATA.csv --target COLUMN`` trains a model on a numeric CSV
  file once per learning rate, all in one compiled program, prints the
  sweep's summary and writes ``results.csv``, ``summary.json``, ``sweep.png``
  and ``curves.png``; with ``--validation FRACTION`` the best learning rate
  is chosen by the loss on held-out rows (see :mod:`gdjax.cli._split`).
  The file is read in chunks into a memory-mapped data cache inside the
  output folder, once (see :mod:`gdjax.cli._csvcache`).
* ``gdjax study DATA.csv --target COLUMN`` measures, for each batch size, the
  best learning rate and the steps, examples and seconds to reach a target
  loss (:func:`gdjax.study`), and writes ``study.csv``, ``summary.json`` and
  ``study.png`` (see :mod:`gdjax.cli._study`).

Any bad input (a missing or malformed file, an option out of range, an
argument gdjax refuses, an output that cannot be written) ends the command
with one line ``gdjax: error: ...`` on standard error and exit status 2, never
a traceback. What can be checked is checked before anything is compiled: the
options (learning rates representable in float32, fewer than 2**31 steps, the
estimated memory against half of this machine's memory), the data file, and
the output folder (created, probed with a temporary file, no output that is a
folder, a symbolic link or the input itself). :func:`main` returns the exit
status rather than exiting; :func:`entry`, the console script and
``python -m gdjax``, exits with it.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from gdjax.cli import _compile_cache, csvdata
from gdjax.cli._commands import demo, sweep
from gdjax.cli._common import UsageError
from gdjax.cli._parser import check_options, parse
from gdjax.cli._study import study

__all__ = ["entry", "main"]


def _tolerant_streams() -> Callable[[], None]:
    """Make standard output and error escape what their encoding cannot show, rather than raise.

    A column named ``Ω`` printed to a cp1252 console becomes ``\\u03a9``.
    Returns a function that puts the streams back as they were.
    """
    undo: list[Callable[[], None]] = []
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")
            undo.append(functools.partial(reconfigure, errors="strict"))

    def restore() -> None:
        for fn in undo:
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing left to print on it
                fn()

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gdjax`` command.

    Args:
      argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
      The exit status: 0 on success; 2 for bad input, a malformed command
      line included (after printing one ``gdjax: error:`` line on standard
      error); 130 when interrupted (Ctrl-C), after ``gdjax: interrupted``;
      1 when standard output is a closed pipe, or when ``gdjax study``
      could not draw its figure (one ``gdjax: error:`` line; the results are
      written).

    Raises:
      SystemExit: ``SystemExit(0)`` from argparse, after printing the help
        (``--help``) or the version (``--version``).
    """
    restore = _tolerant_streams()
    try:
        return _main(argv)
    finally:
        restore()


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = parse(argv)
        check_options(args)
        if args.command == "study":
            return study(args)
        return demo(args) if args.command == "demo" else sweep(args)
    except (UsageError, csvdata.CsvError) as exc:
        print("gdjax: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _inside_finalizer(frame: FrameType | None) -> bool:
    """Whether Python runs a garbage-collector or weakref callback or a ``__del__``: an exception there is dropped."""
    callbacks = {getattr(fn, "__code__", None) for fn in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        weakref_callback = code.co_filename.endswith(("weakref.py", "_weakrefset.py"))
        if code in callbacks or code.co_name == "__del__" or weakref_callback:
            return True
        frame = frame.f_back
    return False


def _on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGINT's handler in the ``gdjax`` process: raise KeyboardInterrupt, but never where Python would drop it.

    Python runs the handler between two bytecodes of whatever the main thread
    runs, a garbage-collector callback included (JAX registers one, and
    tracing a program collects often). A KeyboardInterrupt raised there is
    printed as "Exception ignored in ..." and lost, and the training goes on
    to its end. So there the interrupt is put off: a timer thread interrupts
    the main thread again a moment later.
    """
    if _inside_finalizer(frame):
        timer = threading.Timer(0.01, _thread.interrupt_main)
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


def entry() -> NoReturn:
    """The ``gdjax`` console script and ``python -m gdjax``: run :func:`main` and exit with its status.

    Ctrl-C is handled by :func:`_on_ctrl_c` (unless SIGINT is ignored, as
    for a background job). After it (status 130) the process ends at once
    with ``os._exit``, once standard output and error are flushed: the
    interpreter's teardown would run while XLA's threads (an interrupted
    compilation) are still alive, and could crash (SIGSEGV) instead of
    exiting with 130.

    The process uses JAX's persistent compilation cache
    (:mod:`gdjax.cli._compile_cache`; ``GDJAX_COMPILATION_CACHE=off``
    turns it off); :func:`main` alone, called in a Python process, leaves
    JAX's settings as they are.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_ctrl_c)
    _compile_cache.enable()  # a later process on the same shapes reads XLA's output instead of compiling
    status = main()
    if status == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken stream: nothing more to say on it
                stream.flush()
        os._exit(130)
    sys.exit(status)
