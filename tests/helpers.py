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
