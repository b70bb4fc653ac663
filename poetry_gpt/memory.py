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

In a sampling process ``release_freed_memory`` also asks Linux to reclaim the pages of TensorFlow's own shared
libraries (``page_out_library_code``). Importing TensorFlow keeps about 340 MB of them resident (static initialisers
of every kernel and op it registers); sampling uses a small part. The advice (``MADV_PAGEOUT``) only drops
clean copies of file contents, which the kernel reads back on the next use, so nothing can be lost; a page
that is needed again costs a fault. Linux leaves a page that another process also maps (a second TensorFlow
process started from the same installation), so the saving is largest for a process that runs alone.
Generation's peak resident memory went from 1046 to 724 MB with it (``scripts/bench.py --only memory``; README,
Memory), its first call took 0.2 s longer.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import MutableMapping

#: set to 1 (``use_sampling_env``): ``release_freed_memory`` also pages out TensorFlow's library code
PAGE_OUT_VARIABLE = "POETRY_GPT_PAGE_OUT_CODE"
#: environment of a sampling-only process (``use_sampling_env``)
SAMPLING_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0", PAGE_OUT_VARIABLE: "1"}
MADV_PAGEOUT = 21  # Linux ≥ 5.4: reclaim these pages (clean file pages are dropped, never lost)


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
    if os.environ.get(PAGE_OUT_VARIABLE) == "1":
        page_out_library_code()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _madvise():
    """The C library's ``madvise`` (Linux), or None."""
    if not os.path.exists("/proc/self/maps"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def library_ranges(folder: str, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """Address ranges of the read-only mappings of shared libraries under ``folder`` in this process.

    Args:
        folder: a package folder (e.g. TensorFlow's).
        maps: the process's memory map listing.
    """
    prefix = os.path.join(os.path.realpath(folder), "")
    ranges = []
    with open(maps, encoding="utf-8", errors="replace") as listing:
        for line in listing:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1]:
                continue
            path = fields[5].strip()
            if path.startswith(prefix) and ".so" in os.path.basename(path):
                low, high = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


def page_out_library_code() -> int:
    """Ask Linux to reclaim this process's pages of TensorFlow's shared libraries (read-only mappings only).

    Returns the bytes of the ranges the kernel accepted the advice for: 0 where TensorFlow is not loaded,
    off Linux, or on kernels without ``MADV_PAGEOUT`` (older than 5.4), where nothing changes.
    """
    madvise = _madvise()
    tf = sys.modules.get("tensorflow")
    if madvise is None or tf is None or not getattr(tf, "__file__", None):
        return 0
    advised = 0
    for low, high in library_ranges(os.path.dirname(tf.__file__)):
        if madvise(low, high - low, MADV_PAGEOUT) == 0:
            advised += high - low
    return advised


def use_sampling_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``SAMPLING_ENV`` where the user has not set those variables (call before TensorFlow is imported).

    Args:
        environ: the environment to fill (default: this process's).
    """
    for name, value in SAMPLING_ENV.items():
        environ.setdefault(name, value)
