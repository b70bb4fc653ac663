"""The CLI's quiet TensorFlow start: chatter hidden, but a failed or fatal import shows what TensorFlow printed.

Each test puts a fake ``tensorflow`` package first on PYTHONPATH and runs ``poetry-gpt generate
--top-k 0``, which loads TensorFlow (quietly) and then stops at the option check, before any model.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import cli, env_with_fake_packages, failure_text

TOP_K_ERROR = "Error: --top-k"
FATAL_LINE = "F0000 00:00:1 fake_platform.cc:7] Check failed: this CPU lacks AVX"

FAKES = {
    "noisy": f"""import os, sys, types
os.write(2, b"I0000 00:00:1 port.cc:153] oneDNN custom operations are on\\n")
print("WARNING: chatter from Python", file=sys.stderr)
def _list_physical_devices(kind=None):
    os.write(2, b"E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n")
    return []
config = types.SimpleNamespace(list_physical_devices=_list_physical_devices)
""",
    "raises": f"""import sys
print({FATAL_LINE!r}, file=sys.stderr)
raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
""",
    "aborts": f"""import os
os.write(2, {FATAL_LINE!r}.encode() + b"\\n")
os.abort()
""",
}


def run_with_fake_tensorflow(tmp_path, kind: str) -> subprocess.CompletedProcess:
    """Run ``poetry-gpt generate --top-k 0 春`` with the fake TensorFlow ``kind`` of FAKES."""
    site = tmp_path / "site"
    (site / "tensorflow").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text(FAKES[kind])
    return subprocess.run(cli() + ["generate", "--run", str(tmp_path / "run"), "--top-k", "0", "春"],
                          env=env_with_fake_packages(site), capture_output=True, text=True, timeout=120)


def test_load_time_chatter_is_hidden(tmp_path):
    proc = run_with_fake_tensorflow(tmp_path, "noisy")
    assert proc.returncode == 1
    assert proc.stderr.startswith(TOP_K_ERROR) and proc.stderr.count("\n") == 1, proc.stderr


def test_a_failed_import_shows_what_tensorflow_printed(tmp_path):
    proc = run_with_fake_tensorflow(tmp_path, "raises")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == FATAL_LINE, proc.stderr
    assert lines[1:] == ["Error: TensorFlow failed to load (ImportError: libtensorflow_framework.so.2: cannot open "
                         "shared object file); what it printed is above; `poetry-gpt env` checks the installation"]


@pytest.mark.skipif(sys.platform == "win32", reason="the watcher needs os.fork")
def test_a_process_killed_while_loading_shows_what_tensorflow_printed(tmp_path):
    proc = run_with_fake_tensorflow(tmp_path, "aborts")
    assert proc.returncode == -signal.SIGABRT
    lines = proc.stderr.splitlines()
    assert lines[0] == FATAL_LINE, proc.stderr
    assert lines[1:] == ["Error: the process died while TensorFlow was loading; what TensorFlow printed is above "
                         "(`poetry-gpt env` checks the installation)"]


CRASHING_COMMAND = """import ctypes, sys, threading
from poetry_gpt import cli

@cli.main.command("crash")
def crash_in_native_code():
    ctypes.string_at(0)  # reads address 0: a segmentation fault, as a crash inside TensorFlow would be

def waiting_thread():
    threading.Event().wait()

threading.Thread(target=waiting_thread, daemon=True).start()

sys.argv = ["poetry-gpt", "crash"]
cli.main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_crash_in_native_code_prints_where_it_happened(tmp_path):
    """A command that dies of SIGSEGV leaves the Python stack on stderr (faulthandler), not silence."""
    proc = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    assert "Fatal Python error: Segmentation fault" in proc.stderr, proc.stderr
    assert 'line 6 in crash_in_native_code' in proc.stderr, proc.stderr
    assert 'in waiting_thread' in proc.stderr, proc.stderr  # every thread's stack, not only the crashed one's


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_crash_report_in_a_test_failure_keeps_every_thread(tmp_path, native_crash_env):
    """``helpers.failure_text``: the error line, the innermost frames of each thread and the native stack of the
    crashed one (``native_crash_env``), in a short message."""
    if not native_crash_env:
        pytest.skip("no C compiler to build tests/native_backtrace.c")
    proc = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, **native_crash_env})
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    native = proc.stderr.splitlines().index("Native stack of the crashed thread (tests/native_backtrace.c):")
    short = failure_text(proc.stderr[:proc.stderr.index("Native stack")], frames=2).splitlines()
    assert short[0] == "Fatal Python error: Segmentation fault", proc.stderr
    headers = [line for line in short if line.startswith(("Thread 0x", "Current thread 0x"))]
    assert len(headers) == 2 and sum(h.startswith("Current thread") for h in headers) == 1, proc.stderr
    crashed = short.index(next(h for h in headers if h.startswith("Current")))
    assert short[crashed + 1].endswith("in string_at") and short[crashed + 2].endswith("line 6 in crash_in_native_code")
    assert len(short) == 1 + 2 * 3, short  # 2 frames of each thread
    with_native = failure_text(proc.stderr, frames=2, native_frames=12).splitlines()
    assert with_native[:len(short)] == short
    assert with_native[len(short):] == proc.stderr.splitlines()[native:native + 13]
    assert any("_ctypes" in line for line in with_native[len(short) + 1:]), proc.stderr  # the call that crashed
