"""The content of a run's export folder: ``save_pretrained`` files, the tokenizer and ``poetry_gpt.json``.

``save_export`` / ``load_export`` write and read it: the tokenizer files and ``poetry_gpt.json``
(genre, context, vocab hash) sit beside the weights, so plain transformers can load it with
``TFGPT2LMHeadModel.from_pretrained`` and ``PreTrainedTokenizerFast.from_pretrained``. Where the
folder is, and what ``poetry_gpt.json`` records, are RUN_DIR rules (``run_dir``: ``resolve_export``,
``export_meta``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import __version__
from ..data.vocab import CharVocab
from ..errors import RunDirError
from ..fsutil import atomic_write_json, fsync_dir, read_json, recover_aside, replace_dir
from ..run_dir import EXPORT_META, export_swap, resolve_export
from .gpt2 import check_agreement, check_supported


def save_export(lm, vocab: CharVocab, export_dir: str | os.PathLike, meta: dict) -> Path:
    """Write a self-contained export folder atomically (``export.tmp/``, then ``fsutil.replace_dir``:
    one atomic exchange with the old ``export/`` where the OS allows it, so plain transformers
    finds a complete ``export/`` at every moment).

    Args:
        lm: the model.
        vocab: its vocabulary.
        export_dir: the folder to (re)create.
        meta: facts for ``poetry_gpt.json`` (``run_dir.export_meta``: genre, n_ctx, step, 词牌 patterns, …);
            the vocabulary's hash is added.
    """
    export = Path(export_dir)
    tmp, old = export_swap(export)
    # a fallback swap (no atomic exchange) killed between its two renames left export.old as the only
    # copy: put it back before anything else
    recover_aside(export, old)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lm.save_pretrained(str(tmp))
    vocab.save(tmp)
    atomic_write_json(tmp / EXPORT_META, {"poetry_gpt_version": __version__, "vocab_hash": vocab.hash, **meta})
    fsync_dir(tmp)
    replace_dir(tmp, export, old)
    return export


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
