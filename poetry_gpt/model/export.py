"""The content of a run's export folder: ``save_pretrained`` files, the tokenizer and ``poetry_gpt.json``.

``save_export`` / ``load_export`` write and read it: the tokenizer files and ``poetry_gpt.json``
(genre, context, vocab hash) sit beside the weights, so plain transformers can load it with
``TFGPT2LMHeadModel.from_pretrained`` and ``PreTrainedTokenizerFast.from_pretrained``. Where the
folder is, and what ``poetry_gpt.json`` records, are RUN_DIR rules (``run_dir``: ``resolve_export``,
``export_meta``).

A fine-tuned model (``model.peft.Tuning``): BitFit and LoRA are merged into the weights written (a plain
GPT-2 export; the model in memory is left as it was); Adapter and Prefix cannot be expressed as GPT-2, so
their export is the base's files (with the tuned new embedding rows of an ``--extend-vocab`` run written into
``wte``) plus ``tuning.npz`` (``Tuning.save``) and ``poetry_gpt.json``'s ``"tuning"``: plain transformers
loads only the base from it, ``load_tuning`` (and so ``generate``, ``chat``, ``eval``, ``serve``) the tuned
model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

from .. import __version__
from ..data.vocab import CharVocab
from ..errors import RunDirError
from ..fsutil import atomic_write_json, fsync_dir, read_json, recover_aside, replace_dir
from ..run_dir import EXPORT_META, export_swap, resolve_export
from .gpt2 import check_agreement, check_supported

TUNING_FILE = "tuning.npz"  # the tuned variables of an adapter/prefix export (``Tuning.save``)
MERGED_METHODS = ("bitfit", "lora")  # the --tune methods an export merges into plain GPT-2 weights


def save_export(lm, vocab: CharVocab, export_dir: str | os.PathLike, meta: dict, tuning=None) -> Path:
    """Write a self-contained export folder atomically (``export.tmp/``, then ``fsutil.replace_dir``:
    one atomic exchange with the old ``export/`` where the OS allows it, so plain transformers
    finds a complete ``export/`` at every moment).

    Args:
        lm: the model.
        vocab: its vocabulary.
        export_dir: the folder to (re)create.
        meta: facts for ``poetry_gpt.json`` (``run_dir.export_meta``: genre, n_ctx, step, 词牌 patterns, …);
            the vocabulary's hash is added.
        tuning: the ``model.peft.Tuning`` of a fine-tuned model (merged, or written beside: see the module
            docstring), or None.
    """
    export = Path(export_dir)
    tmp, old = export_swap(export)
    # a fallback swap (no atomic exchange) killed between its two renames left export.old as the only
    # copy: put it back before anything else
    recover_aside(export, old)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tuned = _save_weights(lm, tmp, tuning)
    vocab.save(tmp)
    atomic_write_json(tmp / EXPORT_META, {"poetry_gpt_version": __version__, "vocab_hash": vocab.hash, **meta,
                                          **tuned})
    fsync_dir(tmp)
    replace_dir(tmp, export, old)
    return export


def _save_weights(lm, folder: Path, tuning) -> dict:
    """``save_pretrained`` of ``lm`` into ``folder`` (``tuning`` merged, or saved beside); the
    ``poetry_gpt.json`` facts of the tuning ({} without one).

    Args:
        lm: the model.
        folder: the export folder being written.
        tuning: a ``model.peft.Tuning``, or None.
    """
    if tuning is None:
        lm.save_pretrained(str(folder))
        return {}
    settings = {**dataclasses.asdict(tuning.cfg), "lora_targets": list(tuning.cfg.lora_targets)}
    merge = tuning.cfg.method in MERGED_METHODS
    with restored(lm):
        if merge:
            tuning.merge(lm)
        else:  # the new embedding rows (if any) are plain GPT-2: written into wte; the update stays in the file
            lm.transformer.wte.embeddings.assign(tuning.embedding(update=False))
        lm.save_pretrained(str(folder))
    if merge:
        return {"tuning": {**settings, "merged": True}}
    tuning.save(folder / TUNING_FILE)
    return {"tuning": {**settings, "merged": False, "file": TUNING_FILE}}


@contextlib.contextmanager
def restored(lm):
    """Put ``lm``'s weights back exactly as they were when the block ends (a merge for an export must not
    change a model in training).

    Args:
        lm: the model.
    """
    saved = [v.numpy() for v in lm.weights]
    try:
        yield lm
    finally:
        for variable, value in zip(lm.weights, saved):
            variable.assign(value)


def load_tuning(export: str | os.PathLike, lm, meta: dict):
    """The ``model.peft.Tuning`` an export's model is sampled with (None for a plain or merged export).

    Args:
        export: the export folder.
        lm: its model (``load_export``).
        meta: its ``poetry_gpt.json``.

    Raises:
        RunDirError: the tuning file is missing or does not fit the model.
    """
    info = meta.get("tuning") or {}
    if not info or info.get("merged", True):
        return None
    path = Path(export) / info.get("file", TUNING_FILE)
    if not path.is_file():
        raise RunDirError(f"{export}: poetry_gpt.json records a --tune {info.get('method')} model but {path.name} "
                          "is missing; restore the export's files or re-export the run")
    from .peft import Tuning

    try:
        return Tuning.load(path, lm)
    except RunDirError:
        raise
    except Exception as exc:  # a damaged or foreign file raises many types
        raise RunDirError(f"{path}: not a tuning of this model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); re-export the run") from None


def load_export(path: str | os.PathLike):
    """Load ``(model, vocab, meta)`` from a RUN_DIR or export folder.

    Args:
        path: a RUN_DIR or an export folder.
    """
    from transformers import GPT2Config, TFGPT2LMHeadModel

    export = resolve_export(path)
    vocab = CharVocab.load(export)
    try:
        config = GPT2Config.from_pretrained(str(export))
        check_supported(config, str(export))
        lm = TFGPT2LMHeadModel.from_pretrained(str(export), config=config)
    except RunDirError:
        raise
    except Exception as exc:  # transformers raises many types for a bad folder
        raise RunDirError(f"{export}: not a loadable GPT-2 export ({type(exc).__name__}); "
                          "retrain or pass another folder") from None
    check_agreement(lm, vocab, str(export))
    meta = read_json(export / EXPORT_META) if (export / EXPORT_META).is_file() else {}
    return lm, vocab, meta
