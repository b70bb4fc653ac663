"""Give freed heap memory back to the operating system after one-off peaks.

Loading a model and compiling an XLA program allocate a lot of short-lived memory.
glibc keeps freed memory in its arenas, so the process's resident size stays at the
peak and the next compile piles on top of it. ``release_freed_memory`` asks glibc to
return it (``malloc_trim(0)``): generation with several compiled programs then stays
under its memory budget (``scripts/bench.py``, memory section). Elsewhere (macOS,
musl) it does nothing.

``use_sampling_env`` sets up a process that only samples (``generate``, ``chat``, ``serve``) before
TensorFlow is imported: the compiled sampler is XLA and uses none of TensorFlow's oneDNN kernels,
but with oneDNN on, TensorFlow allocates every tensor, XLA's buffers included, from its oneDNN
CPU allocator, a pool that never gives memory back: it keeps the largest batch's working set (the
KV caches) for good.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import MutableMapping

#: environment of a sampling-only process (``use_sampling_env``)
SAMPLING_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


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


def use_sampling_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``SAMPLING_ENV`` where the user has not set those variables (call before TensorFlow is imported).

    Args:
        environ: the environment to fill (default: this process's).
    """
    for name, value in SAMPLING_ENV.items():
        environ.setdefault(name, value)
