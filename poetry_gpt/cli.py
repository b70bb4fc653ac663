"""The ``poetry-gpt`` command: a thin click layer over the library.

Library code raises ``PoetryGPTError`` subclasses; this group turns them into a
one-line ``Error: ...`` on stderr and exit code 1 (click's usage errors exit 2).
Nothing else in the package prints-and-exits.
"""
from __future__ import annotations

import os
import sys

import click

from . import __version__
from .errors import PoetryGPTError


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


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow 2.21 writes absl, oneDNN and CUDA-probe lines to stderr while it loads, before
    ``TF_CPP_MIN_LOG_LEVEL`` takes effect. If the import fails, nothing is hidden for long: the
    command's own import runs it again and the error shows.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        try:
            import tensorflow  # noqa: F401
        except Exception:  # noqa: BLE001 - re-raised, visibly, by the command's own import
            pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    # (about 6 s and 300 MB more for every command). USE_TF=1 makes transformers skip torch.
    os.environ.setdefault("USE_TF", "1")
    if ctx.invoked_subcommand in _QUIET_TF_COMMANDS and not {"-h", "--help"} & set(sys.argv[1:]):
        _import_tensorflow_quietly()


@main.group(cls=_Group)
def corpus():
    """Look at, import and download poem corpora."""


def _register() -> None:
    """Attach the subcommands (each lives in ``poetry_gpt/commands/``)."""
    from .commands import register_all

    register_all(main, corpus)


_register()
