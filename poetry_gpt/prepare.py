"""``prepare``: raw.txt files → character vocabulary + TFRecord shards + manifest in a DATA_DIR.

The DATA_DIR is built in a sibling temporary folder and renamed into place only
when complete, so an interrupted run never leaves a half-written DATA_DIR and an
existing one (replaced only with ``overwrite=True``) stays intact until the new
one is whole.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .config import DataConfig
from .corpus import ReadResult, read_corpus
from .diagnostics import corpus_report
from .errors import DataDirError, OptionError
from .records import FORMAT_VERSION, MANIFEST, serialize_examples, write_manifest, write_shards
from .vocab import CharVocab


@dataclass
class PrepareResult:
    """What ``prepare`` wrote.

    Args:
        data_dir: the finished DATA_DIR.
        manifest: the manifest written there.
        report: the corpus diagnostics (see ``diagnostics.corpus_report``).
        seconds: wall time of the work (after imports).
    """

    data_dir: Path
    manifest: dict
    report: dict
    seconds: float


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` poems.

    Args:
        n: number of poems.
        valid_fraction: share held out (rounded, at least one poem).
        seed: the split's seed; the same (n, fraction, seed) always gives the same split.

    Returns:
        ``(train, valid)`` sorted index arrays.
    """
    n_valid = max(1, int(round(n * valid_fraction)))
    if n_valid >= n:
        raise OptionError(f"--valid-fraction: {valid_fraction} of {n} poem(s) leaves no poem for training; "
                          "use a smaller fraction or more poems")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty output folder unless ``overwrite``; refuse files outright."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out: {out} is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OptionError(f"--out: {out} already exists and is not empty; pass --overwrite to replace it "
                          "or choose another folder")


def prepare(raw_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: DataConfig = DataConfig(),
            vocab_dir: str | os.PathLike | None = None, overwrite: bool = False, n_ctx: int = 128,
            progress: Callable[[int], None] | None = None) -> PrepareResult:
    """Turn raw.txt files into a DATA_DIR.

    Args:
        raw_paths: the raw.txt files.
        out_dir: the DATA_DIR to create.
        config: split, vocabulary and shard settings.
        vocab_dir: reuse the vocabulary in this folder instead of building one (for fine-tuning).
        overwrite: replace an existing non-empty ``out_dir``.
        n_ctx: the context the data is meant for (only for the report's long-poem count).
        progress: called with the number of poems just written, for a progress bar.
    """
    out = Path(out_dir)
    check_output_dir(out, overwrite)
    start = time.perf_counter()
    read = read_corpus(raw_paths, max_chars=config.max_chars, keep_duplicates=config.keep_duplicates)
    lines = [p.text for p in read.poems]
    if vocab_dir is not None:
        vocab = CharVocab.load(vocab_dir)
        vocab_source = str(vocab_dir)
    else:
        vocab = CharVocab.from_counts(CharVocab.count_chars(lines), config.min_count)
        vocab_source = "built from the corpus"
    ids, lengths = vocab.encode_lines(lines)
    train_idx, valid_idx = split_indices(len(lines), config.valid_fraction, config.seed)
    report = corpus_report(read, vocab, ids=ids, lengths=lengths, n_ctx=n_ctx, vocab_given=vocab_dir is not None)

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    _remove_stale_partials(out)
    tmp.mkdir(parents=True)
    try:
        vocab.save(tmp)
        is_valid = np.zeros(len(lengths), dtype=bool)
        is_valid[valid_idx] = True
        token_is_valid = np.repeat(is_valid, lengths)
        splits, digest = {}, hashlib.sha256(vocab.hash.encode())
        for name, idx, token_sel in (("train", train_idx, ~token_is_valid), ("valid", valid_idx, token_is_valid)):
            sel_lengths = lengths[idx]
            sel_ids = ids[token_sel]
            records = serialize_examples(sel_ids, sel_lengths)
            for rec in records:
                digest.update(rec)
            shards = write_shards(tmp, name, records, config.shard_poems)
            if progress:
                progress(len(records))
            splits[name] = {"shards": shards, "poems": int(len(idx)), "tokens": int(sel_lengths.sum())}
        manifest = {
            "format_version": FORMAT_VERSION,
            "poetry_gpt_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": [os.path.abspath(p) for p in read.files],
            "options": dataclasses.asdict(config),
            "vocab": {"size": vocab.size, "hash": vocab.hash, "source": vocab_source,
                      "pad_id": vocab.pad_id, "unk_id": vocab.unk_id, "sep_id": vocab.sep_id},
            "splits": splits,
            "genres": dict(Counter(p.genre for p in read.poems).most_common()),
            "hash": digest.hexdigest(),
            "report": report,
        }
        write_manifest(tmp, manifest)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, manifest, report, time.perf_counter() - start)


def _remove_stale_partials(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.partial-*") if out.parent.exists() else ():
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is removed only after that."""
    if out.is_dir():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    if not (out / MANIFEST).is_file():  # pragma: no cover - would be a bug
        raise DataDirError(f"{out}: manifest missing after prepare")


def read_only_report(raw_paths: Sequence[str | os.PathLike], config: DataConfig = DataConfig(),
                     n_ctx: int = 128) -> dict:
    """The diagnostics ``prepare`` would print, without writing anything (``corpus stats``).

    Args:
        raw_paths: the raw.txt files.
        config: reading and vocabulary settings.
        n_ctx: context for the long-poem count.
    """
    read: ReadResult = read_corpus(raw_paths, max_chars=config.max_chars, keep_duplicates=config.keep_duplicates)
    lines = [p.text for p in read.poems]
    vocab = CharVocab.from_counts(CharVocab.count_chars(lines), config.min_count)
    ids, lengths = vocab.encode_lines(lines)
    return corpus_report(read, vocab, ids=ids, lengths=lengths, n_ctx=n_ctx, vocab_given=False)
