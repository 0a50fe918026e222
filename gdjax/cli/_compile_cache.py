"""JAX's persistent compilation cache for the ``gdjax`` command: a second run on the same shapes skips XLA.

Every ``gdjax`` process compiles its programs anew; with this cache, XLA's
output is written to a folder and a later process compiling the same program
(same shapes, options, JAX version and machine) reads it back instead.
Only the command enables it (:func:`enable`, called by
:func:`gdjax.cli.entry`): importing gdjax changes nothing of JAX's settings.

Where:

* ``GDJAX_COMPILATION_CACHE=DIR``: that folder; ``off`` (or empty): no cache
  from gdjax (JAX's own settings, if any, still apply);
* otherwise a folder JAX already has (``JAX_COMPILATION_CACHE_DIR``, or
  ``jax.config.update("jax_compilation_cache_dir", ...)``), kept as it is;
* otherwise ``$XDG_CACHE_HOME/gdjax/jax``, or ``~/.cache/gdjax/jax``.

JAX caches only programs that took at least a second to compile
(``jax_persistent_cache_min_compile_time_secs``); gdjax's programs on a CPU
often take less, so the command lowers it to 0 and lets entries of any size
in (``jax_persistent_cache_min_entry_size_bytes = -1``), unless those are set
in the environment (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``,
``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES``). A folder that cannot be
created leaves the cache off: the command runs as without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax

#: The environment variable that chooses the folder (or ``off``).
ENV = "GDJAX_COMPILATION_CACHE"
_THRESHOLDS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


def folder(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder the command's cache is in, or None when it is off (or JAX's own folder is used)."""
    chosen = environ.get(ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off") else Path(chosen).expanduser()
    if _jax_folder():  # JAX_COMPILATION_CACHE_DIR, or set by hand
        return None
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "gdjax" / "jax"


def enable(environ: Mapping[str, str] = os.environ) -> str | None:
    """Turn the persistent cache on for this process (before anything is compiled); return its folder, or None.

    Never raises: a cache that cannot be set up (a folder that cannot be created) leaves it off.
    """
    chosen = environ.get(ENV)
    if chosen is not None and chosen.strip().lower() in ("", "off"):
        return None
    try:
        path = folder(environ)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", str(path))
        for name, value in _THRESHOLDS.items():
            if name.upper() not in environ:
                jax.config.update(name, value)
    except (OSError, AttributeError, ValueError):
        return None
    return _jax_folder()


def _jax_folder() -> str | None:
    """JAX's ``jax_compilation_cache_dir`` (None: no cache)."""
    return getattr(jax.config, "jax_compilation_cache_dir", None)
