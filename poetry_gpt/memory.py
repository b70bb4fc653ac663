"""Give freed heap memory back to the operating system after one-off peaks.

Loading a model and compiling an XLA program allocate a lot of short-lived memory.
glibc keeps freed memory in its arenas, so the process's resident size stays at the
peak and the next compile piles on top of it. ``release_freed_memory`` asks glibc to
return it (``malloc_trim(0)``): generation with several compiled programs then stays
under its memory budget (``scripts/bench.py``, memory section). Elsewhere (macOS,
musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; True if the C library could (glibc).

    Cheap (milliseconds): call it after a model load or a compile, not every step.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
