"""Shared pytest fixtures."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The public corpora in ``../shared/corpus`` (never copied into the repo).

    Skips the test when the folder is absent, except under ``CI=true``, where that is a failure
    (so CI can never pass by skipping).
    """
    if not SHARED_CORPUS.is_dir():
        reason = f"shared corpus folder not found: {SHARED_CORPUS} (public data kept next to the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI=true requires it")
        pytest.skip(reason)
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def native_crash_env(tmp_path_factory) -> dict:
    """Variables that make a child process print the native stack of a crash (``helpers.native_crash_env``)."""
    from helpers import native_crash_env

    return native_crash_env(tmp_path_factory.mktemp("native-backtrace"))


@pytest.fixture(autouse=True)
def _session_environment():
    """Every test ends with the environment it started with.

    A command run in-process (click's ``CliRunner``) sets variables for its own process: ``generate``
    sets ``memory.SAMPLING_ENV`` (oneDNN off, library code paged out). Left in ``os.environ``, they would
    reach the subprocesses of every later test: a ``train`` child would then train without oneDNN and page
    out its library code, which no user's ``train`` does.
    """
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------- poetry-gpt serve (test_serve*.py)
SERVE_MAX_BATCH = 4
SERVE_MAX_QUEUE = 4


def _tree(path: Path) -> dict:
    """Every file under ``path`` with its size and modification time (to prove nothing was written)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A RUN_DIR of the ``tiny`` preset trained a few steps on random quatrains, once per test run."""
    from helpers import train_tiny, write_raw

    root = tmp_path_factory.mktemp("tiny_run")
    return train_tiny(write_raw(root / "raw.txt", 200), root, steps=20)


@pytest.fixture(scope="session")
def serve_url(tiny_run):
    """A real ``poetry-gpt serve`` process on a free 127.0.0.1 port; yields its base URL.

    Teardown stops it with SIGINT (Ctrl-C) and checks that it exits cleanly and wrote nothing into
    the RUN_DIR.
    """
    import signal
    import subprocess
    import threading

    from helpers import cli

    before = _tree(tiny_run)
    proc = subprocess.Popen(cli() + ["serve", "--run", str(tiny_run), "--port", "0", "--max-batch",
                                     str(SERVE_MAX_BATCH), "--max-queue", str(SERVE_MAX_QUEUE), "--window-ms", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines: list[str] = []
    ready = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ready: "):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    ready.wait(600)
    if proc.poll() is not None or not any(line.startswith("ready: ") for line in lines):
        proc.kill()
        pytest.fail("poetry-gpt serve did not start:\n" + "".join(lines[-30:]))
    url = next(line for line in lines if line.startswith("ready: ")).split()[1].rstrip("/")
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
        output = "".join(lines)
        assert code == 0, output[-3000:]
        served = re.search(r"^stopped: (\d+) requests, (\d+) poems in (\d+) batches", output, re.M)
        assert served and int(served.group(1)) > 0 and "Traceback" not in output, output[-3000:]
        assert _tree(tiny_run) == before, "the server wrote into its RUN_DIR"
