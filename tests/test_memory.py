"""release_freed_memory: freed heap pages go back to the OS (glibc's malloc_trim); elsewhere it does nothing."""
import json
import subprocess
import sys

import pytest

from poetry_gpt import memory

# In a fresh process: 100 MB in 1000-byte blocks (below glibc's mmap threshold, so from the heap),
# then freed with one block above them still held, so glibc cannot shrink the heap by itself.
HELD_THEN_RELEASED = r"""
import ctypes, ctypes.util, json, os
from poetry_gpt.memory import release_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

blocks = [libc.malloc(1000) for _ in range(100_000)]
pin = libc.malloc(1000)
for b in blocks:
    ctypes.memset(b, 1, 1000)
for b in blocks:
    libc.free(b)
freed = rss()
released = release_freed_memory()
print(json.dumps({"released": released, "freed_rss": freed, "after_rss": rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's; /proc is Linux's")
def test_freed_heap_memory_leaves_the_resident_set():
    proc = subprocess.run([sys.executable, "-c", HELD_THEN_RELEASED], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["released"] is True
    # the 100 MB glibc kept after free() leave the resident set (≥ 95 MB of them)
    assert out["freed_rss"] - out["after_rss"] >= 95e6, out


def test_without_malloc_trim_it_reports_false(monkeypatch):
    """A C library without malloc_trim (macOS, musl): nothing to call, False."""
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: None)
    memory._malloc_trim.cache_clear()
    try:
        assert memory.release_freed_memory() is False
    finally:
        memory._malloc_trim.cache_clear()


@pytest.mark.parametrize("command, expected", [("generate", "0"), ("chat", "0"), ("serve", "0"), ("train", None)])
def test_sampling_commands_turn_off_onednn_before_tensorflow_loads(monkeypatch, command, expected):
    """With oneDNN on, TensorFlow's pooling allocator keeps the largest batch's buffers for good; the
    sampler is XLA, so the sampling-only commands turn it off (a user's own setting wins)."""
    from click.testing import CliRunner

    from poetry_gpt.cli import main

    monkeypatch.setattr("poetry_gpt.cli._import_tensorflow_quietly", lambda: None)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0
    assert memory.os.environ.get("TF_ENABLE_ONEDNN_OPTS") == expected
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    CliRunner().invoke(main, [command, "--help"])
    assert memory.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
