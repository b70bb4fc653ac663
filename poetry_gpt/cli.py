"""The ``poetry-gpt`` command: a thin click layer over the library.

Library code raises ``PoetryGPTError`` subclasses; this group turns them into a
one-line ``Error: ...`` on stderr and exit code 1 (click's usage errors exit 2).
Nothing else in the package prints-and-exits.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile

import click

from . import __version__
from .errors import EnvironmentProblem, PoetryGPTError
from .memory import use_sampling_env


class _Group(click.Group):
    """A click group that reports library errors in one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PoetryGPTError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


# commands that load TensorFlow and print poems or progress a user reads (not `env`, whose job
# includes showing what TensorFlow says about CUDA)
_QUIET_TF_COMMANDS = {"prepare", "train", "pipeline", "generate", "chat", "eval", "serve"}
# commands that only sample from a loaded model (``memory.use_sampling_env``: less memory, same speed)
_SAMPLING_COMMANDS = {"generate", "chat", "serve"}


_DIED_LOADING = ("Error: the process died while TensorFlow was loading; what TensorFlow printed is above "
                 "(`poetry-gpt env` checks the installation)\n")


def _read_from_start(fd: int) -> bytes:
    """Everything in the file open as ``fd``, from its first byte."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write part of it)."""
    while data:
        data = data[os.write(fd, data):]


def _start_watcher(capture_fd: int, stderr_fd: int) -> tuple[int, int]:
    """Fork a watcher that copies the captured text to the real stderr if this process dies first.

    The watcher waits for ``ok`` on a pipe; if the pipe closes without it (a C++ abort, a fatal
    signal: the kernel closes a dead process's files), it writes the captured text and a last
    line to ``stderr_fd``. Returns (watcher pid, write end of the pipe).

    Args:
        capture_fd: the file that fd 2 is redirected to.
        stderr_fd: a duplicate of the real stderr.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the watcher: never returns into the CLI
        try:
            os.close(write_end)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
            status = b""
            while chunk := os.read(read_end, 16):
                status += chunk
            if status != b"ok":
                _write_all(stderr_fd, _read_from_start(capture_fd) + _DIED_LOADING.encode())
        finally:
            os._exit(0)
    os.close(read_end)
    return pid, write_end


def _stop_watcher(pid: int, write_end: int) -> None:
    """Tell the watcher this process is alive and done (it exits silently), and reap it."""
    try:
        os.write(write_end, b"ok")
    except OSError:  # the watcher is gone already
        pass
    os.close(write_end)
    os.waitpid(pid, 0)


class _CapturedStderr:
    """File descriptor 2 redirected to an unlinked temporary file for the ``with`` block.

    On leaving the block with an exception, what was captured is copied to the real stderr; if the
    process dies inside the block, a forked watcher copies it (where ``os.fork`` exists).
    """

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        self._watcher = _start_watcher(self._file.fileno(), self._saved) if hasattr(os, "fork") else None
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self._watcher:
            _stop_watcher(*self._watcher)
        if exc_type is not None and issubclass(exc_type, Exception):
            sys.stderr.write(_read_from_start(self._file.fileno()).decode(errors="replace"))
            sys.stderr.flush()
        self._file.close()
        return False


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and run its CUDA probe with file descriptor 2 captured, not shown.

    TensorFlow 2.21 writes absl, oneDNN and CUDA-probe lines to stderr while it loads, before
    ``TF_CPP_MIN_LOG_LEVEL`` takes effect; the probe (which logs ``failed call to cuInit`` on a
    machine without a GPU) runs at the first device use, so listing the GPUs here runs it too (it
    does not create the eager context, which multi-worker training must configure first). If the
    import fails, what TensorFlow printed is shown with a one-line error; if it kills the process
    (a C++ abort), a watcher shows it.

    Raises:
        EnvironmentProblem: importing TensorFlow raised.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        with _CapturedStderr():
            import tensorflow

            tensorflow.config.list_physical_devices("GPU")
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, with TensorFlow's own lines
        first_line = (str(exc).splitlines() or [""])[0]
        raise EnvironmentProblem(f"TensorFlow failed to load ({type(exc).__name__}: {first_line}); "
                                 "what it printed is above; `poetry-gpt env` checks the installation") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="poetry-gpt")
@click.pass_context
def main(ctx):
    """Train your own GPT-2 poet on a raw.txt of classical poems, one poem a line."""
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise for a CLI user
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # poetry_gpt is TensorFlow-only: with torch installed, transformers would import it too
    # (seconds and hundreds of MB more for every command). USE_TF=1 makes transformers skip torch.
    os.environ.setdefault("USE_TF", "1")
    if ctx.invoked_subcommand in _SAMPLING_COMMANDS:
        use_sampling_env()
    if ctx.invoked_subcommand in _QUIET_TF_COMMANDS and not {"-h", "--help"} & set(sys.argv[1:]):
        _import_tensorflow_quietly()
    _report_native_crashes()  # after the quiet import: a crash while TensorFlow loads has its own report


def _report_native_crashes() -> None:
    """On a crash in native code (a segmentation fault in TensorFlow or a library), print the Python
    stack of every thread to stderr before the process dies (``faulthandler``), so that the crash names
    where it happened instead of ending the command silently."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no real stderr (an embedding host): nothing to report to
        pass


@main.group(cls=_Group)
def corpus():
    """Look at, import and download poem corpora."""


def _register() -> None:
    """Attach the subcommands (each lives in ``poetry_gpt/commands/``)."""
    from .commands import register_all

    register_all(main, corpus)


_register()
