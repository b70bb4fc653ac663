"""``prepare``: raw.txt files → character vocabulary + TFRecord shards + manifest in a DATA_DIR.

The DATA_DIR is built in a sibling temporary folder (``.NAME.partial-PID``) and
renamed into place only when complete, so an interrupted run (even ``kill -9``)
never leaves a half-written DATA_DIR. An existing one (replaced only with
``overwrite=True``) is swapped with the new one in one atomic step where Linux
allows it, so at every moment the path holds the old or the new DATA_DIR. The next
``prepare`` into the same path removes what killed runs left behind.

Speed: the poems are parsed with one regex over each file, counted, encoded and
serialised with numpy in chunks of ``_CHUNK`` poems, so the cost per character is
flat (``scripts/bench_prepare.py`` measures it on tang-full 1×, 4×, 16×).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from ..config import DEFAULT_N_CTX, DataConfig
from ..errors import DataDirError, OptionError
from ..fsutil import is_within, recover_aside, replace_dir
from ..verse.metre import warm_up
from .corpus import ReadResult, read_corpus
from .diagnostics import corpus_report
from .manifest import FORMAT_VERSION, MANIFEST, write_manifest
from .tfexample import serialize_buffer, write_shards
from .vocab import UNK_ID, CharVocab, codepoints, counts_from_bincount, line_lengths, load_base_vocab


@dataclass
class PrepareResult:
    """What ``prepare`` wrote.

    Args:
        data_dir: the finished DATA_DIR.
        manifest: the manifest written there.
        report: the corpus diagnostics (see ``diagnostics.corpus_report``).
        seconds: wall time of the work (TensorFlow's import, when it happens here, not included).
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


def check_output_dir(out: Path, overwrite: bool, inputs: Sequence[tuple[str, str | os.PathLike]] = (),
                     option: str = "--out") -> None:
    """Refuse an ``--out`` that would replace something the user had.

    ``out`` may not be a file, be or hold an input, or lie inside one; a non-empty ``out`` is
    replaced only with ``overwrite``, and only when it is a DATA_DIR (has ``manifest.json``).

    Args:
        out: the DATA_DIR to write.
        overwrite: ``--overwrite`` was given.
        inputs: ``(option, path)`` of everything ``prepare`` reads (``RAW`` files, ``--vocab``).
        option: how messages name the output (``pipeline`` writes ``RUN_DIR/data``, not an ``--out``).
    """
    if out.exists() and not out.is_dir():
        raise OptionError(f"{option}: {out} is a file, not a folder; choose another path")
    for name, path in inputs:
        if is_within(path, out):
            raise OptionError(f"{option}: {out} holds the input {name} {path}, which replacing it would delete; "
                              "choose an output folder outside the inputs")
        if is_within(out, path):
            raise OptionError(f"{option}: {out} is inside the input {name} {path}; "
                              "choose an output folder outside the inputs")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not (out / MANIFEST).is_file():
        raise OptionError(f"{option}: {out} is not empty and is not a DATA_DIR (no {MANIFEST}); --overwrite replaces "
                          "only a DATA_DIR written by `poetry-gpt prepare`; empty it yourself or choose another folder")
    if not overwrite:
        raise OptionError(f"{option}: {out} already exists and is not empty; pass --overwrite to replace it "
                          "or choose another folder")


def prepare(raw_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: DataConfig = DataConfig(),
            vocab_dir: str | os.PathLike | None = None, overwrite: bool = False, n_ctx: int = DEFAULT_N_CTX,
            progress: Callable[[int], None] | None = None, out_option: str = "--out",
            extend_vocab: bool = False) -> PrepareResult:
    """Turn raw.txt files into a DATA_DIR.

    Args:
        raw_paths: the raw.txt files.
        out_dir: the DATA_DIR to create.
        config: split, vocabulary and shard settings.
        vocab_dir: reuse the vocabulary in this folder instead of building one (for fine-tuning): a DATA_DIR,
            RUN_DIR, export, or a BERT-style public checkpoint folder (mapped: ``vocab.BaseVocab``).
        overwrite: replace an existing DATA_DIR at ``out_dir`` (never another non-empty folder, nor
            one that holds or lies inside an input).
        n_ctx: the context the data is meant for (only for the report's long-poem count).
        progress: called with the number of poems just written, for a progress bar.
        out_option: how error messages name ``out_dir`` (the option the user gave it with).
        extend_vocab: append the corpus's characters that ``vocab_dir``'s vocabulary lacks (ids after the
            base's; ``CharVocab.extended``) and record the base in the manifest's ``vocab_base``.
    """
    if extend_vocab and vocab_dir is None:
        raise OptionError("--extend-vocab: needs --vocab BASE, the vocabulary to extend (a DATA_DIR, a run's "
                          "export/ or a public checkpoint folder); without --vocab prepare builds a whole new one")
    out = Path(out_dir)
    _remove_stale_partials(out)  # first: it may put back a DATA_DIR that a killed run had moved aside
    # a RAW that is not a file is refused by the reading, with its own message
    inputs = [("RAW", p) for p in raw_paths if Path(p).is_file()] + \
        ([("--vocab", vocab_dir)] if vocab_dir is not None else [])
    check_output_dir(out, overwrite, inputs, out_option)
    start = time.perf_counter()
    vocab_given = vocab_dir is not None
    base = load_base_vocab(vocab_dir) if vocab_given else None  # a bad --vocab fails before the reading
    read = read_corpus(raw_paths, max_chars=config.max_chars, keep_duplicates=config.keep_duplicates)
    warm = time.perf_counter()
    warm_up([p.body for p in read.poems[:200]])  # the tone table: start-up, like TensorFlow's import below
    start += time.perf_counter() - warm
    vocab, all_records, lengths, report = _encode_and_report(read, config, n_ctx, base and base.vocab,
                                                             serialize=True, extend=extend_vocab)
    vocab_source = str(vocab_dir) if vocab_given else "built from the corpus"
    train_idx, valid_idx = split_indices(len(lengths), config.valid_fraction, config.seed)

    import_start = time.perf_counter()
    import tensorflow  # noqa: F401  (for the shards; a first import takes seconds, not counted as work)
    start += time.perf_counter() - import_start

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process with our (reused) pid
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise OptionError(f"{out_option}: cannot create a folder next to {out} ({exc.strerror or exc}); "
                          "choose a writable place") from None
    try:
        vocab.save(tmp)
        # every poem was serialised once, in corpus order; each split picks its records
        splits, digest = {}, hashlib.sha256(vocab.hash.encode())
        for name, idx in (("train", train_idx), ("valid", valid_idx)):
            records = [all_records[i] for i in idx.tolist()]
            for i in range(0, len(records), _CHUNK):
                digest.update(b"".join(records[i:i + _CHUNK]))  # the same digest as record by record
            shards = write_shards(tmp, name, records, config.shard_poems)
            if progress:
                progress(len(records))
            splits[name] = {"shards": shards, "poems": int(len(idx)), "tokens": int(lengths[idx].sum()),
                            "shard_bytes": [(tmp / shard).stat().st_size for shard in shards]}
        manifest = {
            "format_version": FORMAT_VERSION,
            "poetry_gpt_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": [os.path.abspath(p) for p in read.files],
            "options": dataclasses.asdict(config),
            "vocab": {"size": vocab.size, "hash": vocab.hash, "source": vocab_source,
                      "pad_id": vocab.pad_id, "unk_id": vocab.unk_id, "sep_id": vocab.sep_id},
            **({"vocab_base": {"size": base.size, "hash": base.vocab.hash}} if extend_vocab else {}),
            "splits": splits,
            "genres": dict(report["genres"]),
            "cipai": report["cipai"],  # 词牌 -> its learned clause pattern (cipai.learn_patterns)
            "hash": digest.hexdigest(),
            "report": report,
        }
        write_manifest(tmp, manifest)
        _swap_into_place(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataDirError(f"{out}: writing the DATA_DIR failed ({exc.strerror or exc}"
                           f"{': ' + str(exc.filename) if exc.filename else ''}); nothing was changed") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, manifest, report, time.perf_counter() - start)


def _remove_stale_partials(out: Path) -> None:
    """Clean up after prepares that were killed: their partial folders, and old DATA_DIRs they swapped out.

    A ``.NAME.old-PID`` folder exists only between the two renames of the fallback swap; if its
    process died there and ``out`` is missing, the old DATA_DIR is put back, else it is removed.
    """
    if not out.parent.is_dir():
        return
    for kind in ("partial", "old"):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old":
                recover_aside(out, stale)
            else:
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
    """Put the finished folder at ``out`` (``fsutil.replace_dir``: one atomic exchange where the OS
    allows it; elsewhere the old DATA_DIR is parked as ``.NAME.old-PID``, which
    ``_remove_stale_partials`` restores if the process dies in between)."""
    replace_dir(tmp, out, out.with_name(f".{out.name}.old-{os.getpid()}"))
    if not (out / MANIFEST).is_file():  # pragma: no cover - would be a bug
        raise DataDirError(f"{out}: manifest missing after prepare")


def read_only_report(raw_paths: Sequence[str | os.PathLike], config: DataConfig = DataConfig(),
                     n_ctx: int = DEFAULT_N_CTX) -> dict:
    """The diagnostics ``prepare`` would print, without writing anything (``corpus stats``).

    It adds what ``prepare`` skips for speed: the rhyme rate of the regular poems (``forms.check``:
    rhyme-position finals via pypinyin) and distinct-1/2 of the bodies (``poem_metrics``).

    Args:
        raw_paths: the raw.txt files.
        config: reading and vocabulary settings.
        n_ctx: context for the long-poem count.
    """
    from ..verse.poem_metrics import corpus_figures

    read: ReadResult = read_corpus(raw_paths, max_chars=config.max_chars, keep_duplicates=config.keep_duplicates)
    report = _encode_and_report(read, config, n_ctx, None, serialize=False)[3]
    figures = corpus_figures([p.body for p in read.poems])
    report["regular_form"]["rhyme_rate"] = figures["rhyme_rate"]
    report["distinct"] = {"distinct_1": figures["distinct_1"], "distinct_2": figures["distinct_2"]}
    return report


_CHUNK = 32768  # poems per step of the numpy work: small temporaries keep the cost per character flat


def _encode_and_report(read: ReadResult, config: DataConfig, n_ctx: int, vocab: CharVocab | None,
                       serialize: bool, extend: bool = False):
    """Count, build the vocabulary (unless given; extended with new characters if ``extend``), encode and
    serialise the kept poems; report on them.

    The canonical lines are processed in chunks of ``_CHUNK`` poems (one pass to count the
    characters, one to encode and serialise), so memory and time grow linearly with the corpus.

    Returns:
        ``(vocab, records, lengths, report)``: records (serialised ``tf.train.Example`` per poem,
        in corpus order; empty unless ``serialize``) and each line's length.
    """
    lines = [p.text for p in read.poems]
    lengths = line_lengths(lines)
    starts = range(0, len(lines), _CHUNK)
    occurrences = np.zeros(0, np.int64)
    for s in starts:
        counts = np.bincount(codepoints(lines[s:s + _CHUNK]))
        if len(counts) > len(occurrences):
            occurrences = np.concatenate([occurrences, np.zeros(len(counts) - len(occurrences), np.int64)])
        occurrences[:len(counts)] += counts
    chars = counts_from_bincount(occurrences)
    vocab_given = vocab is not None
    if vocab is None:
        vocab = CharVocab.from_counts(chars, config.min_count)
    elif extend:
        vocab = vocab.extended(chars, config.min_count)
    unk, records = 0, []
    for s in starts:
        ids = vocab.encode_codepoints(codepoints(lines[s:s + _CHUNK]))
        unk += int(np.count_nonzero(ids == UNK_ID))
        if serialize:
            buf, ends = serialize_buffer(ids, lengths[s:s + _CHUNK])
            bounds = [0, *ends.tolist()]
            records.extend([buf[a:b] for a, b in zip(bounds, bounds[1:])])
    report = corpus_report(read, vocab, ids=None, lengths=lengths, n_ctx=n_ctx, vocab_given=vocab_given,
                           chars=chars, unk_occurrences=unk)
    return vocab, records, lengths, report
