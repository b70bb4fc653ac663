"""Helpers shared by the tests: tiny corpora of regular poems, and the CLI as a subprocess command."""
from __future__ import annotations

import random
import sys
from pathlib import Path

CHARS = "春花秋月山水风云天地人心江河日夜雪雨"


def write_raw(path: Path, n: int, seed: int = 0, chars: str = CHARS, genre: str = "唐诗", width: int = 5) -> Path:
    """Write ``n`` random regular quatrains ``title 体裁：【body】`` (4 clauses of ``width`` chars) to ``path``.

    Args:
        path: the raw.txt to write.
        n: number of poems (random, so practically no duplicates).
        seed: random seed.
        chars: the characters to draw from.
        genre: the genre word.
        width: characters per clause.
    """
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        title = "".join(rng.choice(chars) for _ in range(2))
        body = "".join("".join(rng.choice(chars) for _ in range(width)) + "，。"[j % 2] for j in range(4))
        lines.append(f"{title} {genre}：【{body}】")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepared_data(folder: Path, n: int, n_ctx: int = 64) -> Path:
    """``write_raw`` ``n`` poems into ``folder/raw.txt`` and ``prepare`` them (5% held out) into ``folder/data``.

    Args:
        folder: an existing folder.
        n: number of poems.
        n_ctx: the context the data is prepared for.
    """
    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    prepare([write_raw(folder / "raw.txt", n)], folder / "data", DataConfig(valid_fraction=0.05), n_ctx=n_ctx)
    return folder / "data"


def train_tiny(raw: Path, root: Path, steps: int = 20) -> Path:
    """Prepare ``raw`` into ``root/data`` (context 64) and train the ``tiny`` preset ``steps`` steps into
    ``root/run`` (float32); returns the RUN_DIR.

    Args:
        raw: a raw.txt.
        root: the folder for ``data`` and ``run``.
        steps: training steps (one epoch).
    """
    from poetry_gpt.config import DataConfig, config_from_preset
    from poetry_gpt.data.prepare import prepare
    from poetry_gpt.train.loop import train

    prepare([raw], root / "data", DataConfig(valid_fraction=0.1), n_ctx=64)
    config = config_from_preset("tiny").replace(train=dict(epochs=1, steps_per_epoch=steps, samples_per_epoch=0,
                                                           precision="fp32"))
    train(root / "data", root / "run", config, echo=lambda s: None, verbose=0)
    return root / "run"


def cli() -> list[str]:
    """The ``poetry-gpt`` command of the Python running the tests, for subprocesses."""
    return [sys.executable, "-c", "from poetry_gpt.cli import main; main()"]


def env_with_fake_packages(folder: Path, **extra: str) -> dict:
    """This process's environment with ``folder`` first on PYTHONPATH (fake packages shadow real ones).

    Args:
        folder: the folder holding the fake packages.
        extra: more variables to set.
    """
    import os

    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


NATIVE_STACK_HEADER = "Native stack of the crashed thread"


def failure_text(stderr: str, tail: int = 3000, frames: int = 4, native_frames: int = 16) -> str:
    """What a failed subprocess's stderr says, short enough for an assertion message.

    A native crash (``faulthandler``'s dump: the fatal error line, then one stack per thread) is shown as
    the error line and each thread's innermost ``frames`` frames, so that the thread that crashed is seen
    whatever the number of threads, then the crashed thread's native stack when ``native_crash_env``
    printed one; any other stderr as its last ``tail`` characters.

    Args:
        stderr: the subprocess's stderr.
        tail: characters kept of an ordinary stderr.
        frames: frames kept of each thread's stack.
        native_frames: lines kept of the native stack.
    """
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if start is None:
        return stderr[-tail:]
    kept, left, native = [], 0, False
    for line in lines[start:]:
        if line.startswith(("Fatal Python error", "Thread 0x", "Current thread 0x", NATIVE_STACK_HEADER)):
            kept.append(line)
            native = line.startswith(NATIVE_STACK_HEADER)
            left = native_frames if native else frames
        elif left > 0 and (native or line.startswith("  File ")):
            kept.append(line)
            left -= 1
    return "\n".join(kept)


def native_crash_env(folder: Path) -> dict:
    """Variables that make a child process print its crashed thread's native stack (``tests/native_backtrace.c``,
    built here with the C compiler and loaded with ``LD_PRELOAD``); empty where it cannot be built.

    A segmentation fault inside TensorFlow shows only the Python frames above the call (``faulthandler``); the
    native stack names the library and function it happened in.

    Args:
        folder: where to build the library.
    """
    import os
    import shutil
    import subprocess

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not sys.platform.startswith("linux"):
        return {}
    library = folder / "libnative_backtrace.so"
    source = Path(__file__).with_name("native_backtrace.c")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        return {}
    return {"LD_PRELOAD": os.pathsep.join(p for p in (str(library), os.environ.get("LD_PRELOAD")) if p)}



def loss_poem_by_poem(lm, row, boundary_id: int):
    """The summed next-token cross-entropy of a packed ``row`` (int list) when each poem is fed to transformers'
    model alone: the row cut before each ``boundary_id``, every piece's positions counted from 0, its last
    position predicting the next piece's first token. A float32 tensor (differentiable under a tape).

    Args:
        lm: a ``TFGPT2LMHeadModel``.
        row: token ids of one packed row.
        boundary_id: the poem boundary id.
    """
    import tensorflow as tf

    starts = [0] + [i for i, t in enumerate(row) if t == boundary_id and i > 0] + [len(row)]
    total = tf.constant(0.0)
    for a, b in zip(starts[:-1], starts[1:]):
        logits = lm(input_ids=tf.constant([row[a:b]], tf.int32), training=False).logits[0]
        targets = tf.constant(row[a + 1:b + 1], tf.int32)  # the row's last token predicts nothing
        total += tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                                              logits=logits[:len(row[a + 1:b + 1])]))
    return total
