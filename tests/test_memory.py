"""release_freed_memory: freed heap pages go back to the OS (glibc's malloc_trim); elsewhere it does nothing.
In a sampling process it also pages out TensorFlow's library code (``page_out_library_code``)."""
import json
import os
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
    monkeypatch.delenv(memory.PAGE_OUT_VARIABLE, raising=False)
    assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0
    assert memory.os.environ.get("TF_ENABLE_ONEDNN_OPTS") == expected
    assert memory.os.environ.get(memory.PAGE_OUT_VARIABLE) == (None if expected is None else "1")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    CliRunner().invoke(main, [command, "--help"])
    assert memory.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


# In a fresh process: TensorFlow's resident library pages before and after page_out_library_code, and an op
# run after it (the pages it needs come back from the files).
PAGED_OUT = r"""
import json, os, re
import poetry_gpt
import tensorflow as tf
from poetry_gpt.memory import page_out_library_code

folder = os.path.join(os.path.realpath(os.path.dirname(tf.__file__)), "")

def resident():
    total, path = 0, ""
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            fields = line.split()
            path = fields[5] if len(fields) > 5 else ""
        elif line.startswith("Rss:") and path.startswith(folder):
            total += int(line.split()[1]) * 1024
    return total

before = resident()
advised = page_out_library_code()
after = resident()
value = float(tf.reduce_sum(tf.range(1000.0)))
print(json.dumps({"before": before, "advised": advised, "after": after, "value": value}))
"""


_SESSION_HAD_SAMPLING_ENV = memory.PAGE_OUT_VARIABLE in os.environ


def test_a_test_that_runs_a_sampling_command_in_process_sets_its_environment():
    memory.use_sampling_env()  # what ``generate`` does when a test runs it through click's CliRunner
    assert os.environ[memory.PAGE_OUT_VARIABLE] == "1"


def test_the_next_test_starts_without_it():
    """conftest's ``_session_environment``: the variable did not leak into this test (nor its subprocesses)."""
    assert (memory.PAGE_OUT_VARIABLE in os.environ) == _SESSION_HAD_SAMPLING_ENV


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_PAGEOUT) and /proc are Linux's")
def test_tensorflows_library_pages_leave_the_resident_set():
    # Linux leaves a page that two processes map; when this pytest process has TensorFlow loaded, its own pages
    # go first, so that the child's are its alone
    memory.page_out_library_code()
    proc = subprocess.run([sys.executable, "-c", PAGED_OUT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["advised"] > 100e6 and out["before"] > 100e6, out  # TensorFlow's libraries are mapped, and resident
    # the read-only mappings are dropped; what stays is their writable data (≈ 13 MB of ≈ 340 MB measured)
    assert out["after"] < 0.2 * out["before"], out
    assert out["value"] == sum(range(1000))


def test_only_a_sampling_process_pages_out_library_code(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "page_out_library_code", lambda: calls.append(1) or 0)
    monkeypatch.delenv(memory.PAGE_OUT_VARIABLE, raising=False)
    memory.release_freed_memory()
    assert calls == []  # training, tests, library use: TensorFlow's code stays
    monkeypatch.setenv(memory.PAGE_OUT_VARIABLE, memory.SAMPLING_ENV[memory.PAGE_OUT_VARIABLE])
    memory.release_freed_memory()
    assert calls == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_PAGEOUT) and /proc are Linux's")
def test_generate_writes_the_same_poems_with_its_library_code_paged_out(tiny_run):
    """``generate`` pages out TensorFlow's code after the load and each compile; the poems are those of a
    process that keeps it (a user's own setting of the variable wins)."""
    from helpers import cli

    def poems(page_out: str) -> str:
        env = {**os.environ, memory.PAGE_OUT_VARIABLE: page_out}
        proc = subprocess.run(cli() + ["generate", "--run", str(tiny_run), "-n", "3", "--seed", "7", "春"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    paged_out = poems("1")
    assert paged_out.count("春") >= 3 and paged_out == poems("0")


def test_the_library_ranges_are_the_read_only_mappings_of_the_folders_shared_libraries(tmp_path):
    maps = tmp_path / "maps"
    folder = tmp_path / "site-packages" / "tensorflow"
    lines = [f"7f0000000000-7f0000100000 r--p 00000000 08:01 1 {folder}/libtensorflow_cc.so.2",
             f"7f0000100000-7f0000900000 r-xp 00100000 08:01 1 {folder}/libtensorflow_cc.so.2",
             f"7f0000900000-7f0000a00000 rw-p 00900000 08:01 1 {folder}/libtensorflow_cc.so.2",
             f"7f0000a00000-7f0000b00000 r-xp 00000000 08:01 2 {folder}/python/_op_def.py",
             f"7f0000b00000-7f0000c00000 r-xp 00000000 08:01 3 {tmp_path}/site-packages/numpy/core.so",
             "7f0000c00000-7f0000d00000 rw-p 00000000 00:00 0 ",
             f"7f0000d00000-7f0000e00000 r-xp 00000000 08:01 4 {folder}-extra/libother.so"]
    maps.write_text("\n".join(lines) + "\n")
    assert memory.library_ranges(str(folder), str(maps)) == [(0x7f0000000000, 0x7f0000100000),
                                                             (0x7f0000100000, 0x7f0000900000)]
