"""The model: transformers' ``TFGPT2LMHeadModel`` built from a ``ModelConfig`` and a vocabulary.

Also the export folder (``save_export`` / ``load_export``): ``save_pretrained`` files,
the tokenizer files and ``poetry_gpt.json`` (genre, context, vocab hash), so plain
transformers can load it with ``TFGPT2LMHeadModel.from_pretrained`` and
``PreTrainedTokenizerFast.from_pretrained``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import __version__
from .config import ModelConfig
from .errors import RunDirError
from .fsutil import atomic_write_json, fsync_dir, read_json, recover_aside, replace_dir
from .vocab import CharVocab

EXPORT_META = "poetry_gpt.json"


def gpt2_config(model: ModelConfig, vocab: CharVocab):
    """The transformers ``GPT2Config`` for a model shape and vocabulary.

    Args:
        model: the shape.
        vocab: the character vocabulary (size, pad and boundary ids).
    """
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab.size, n_positions=model.n_ctx, n_embd=model.n_embd, n_layer=model.n_layer,
        n_head=model.n_head, resid_pdrop=model.dropout, embd_pdrop=model.dropout, attn_pdrop=model.dropout,
        bos_token_id=vocab.sep_id, eos_token_id=vocab.sep_id, pad_token_id=vocab.pad_id,
    )


def build_model(model: ModelConfig, vocab: CharVocab, seed: int = 1234):
    """A freshly initialised, built ``TFGPT2LMHeadModel``.

    Args:
        model: the shape.
        vocab: the vocabulary.
        seed: weight-initialisation seed.
    """
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel

    tf.keras.utils.set_random_seed(seed)
    lm = TFGPT2LMHeadModel(gpt2_config(model, vocab))
    lm(tf.zeros([1, 2], tf.int32))
    return lm


def count_parameters(lm) -> int:
    """Number of trainable parameters (the tied LM head counted once)."""
    import numpy as np

    return int(sum(np.prod(v.shape) for v in lm.trainable_variables))


def check_agreement(lm, vocab: CharVocab, source: str) -> None:
    """Refuse a model whose vocabulary size or special ids differ from ``vocab``.

    Args:
        lm: a ``TFGPT2LMHeadModel``.
        vocab: the vocabulary it must match.
        source: where the model came from, for the message.
    """
    cfg = lm.config
    if cfg.vocab_size != vocab.size:
        raise RunDirError(f"{source}: the model has a vocabulary of {cfg.vocab_size} tokens but the data has "
                          f"{vocab.size}; prepare the data with `poetry-gpt prepare RAW --vocab {source}`")


def check_supported(cfg, source: str) -> None:
    """Refuse a GPT-2 configuration that poetry_gpt would compute as another function than it names.

    Training (``fast_gpt2``) and sampling (``sampler``) compute GPT-2 as TensorFlow's
    ``TFGPT2LMHeadModel`` does: attention scaled by 1/sqrt(head size) in every layer, a head tied to the
    input embedding, no cross-attention, any activation of ``transformers.activations_tf`` but ``glu``.
    TensorFlow's GPT-2 silently ignores the settings refused here, so a model trained with them (in
    PyTorch) would be fine-tuned and sampled as a different model.

    Args:
        cfg: a ``GPT2Config``.
        source: where it came from (``--init-from DIR`` or an export folder), for the message.
    """
    from transformers.activations_tf import ACT2FN

    settings = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True}
    problems = [f"{name} {str(getattr(cfg, name, want)).lower()}" for name, want in settings.items()
                if bool(getattr(cfg, name, want)) != want]
    act = getattr(cfg, "activation_function", "gelu_new")
    if act not in ACT2FN or act == "glu":
        supported = ", ".join(sorted(set(ACT2FN) - {"glu"}))
        problems.insert(0, f"activation_function {act!r} (supported: {supported})")
    if problems:
        raise RunDirError(f"{source}: config.json sets {'; '.join(problems)}, which poetry_gpt cannot compute as "
                          "named (nor can TensorFlow's GPT-2); use a GPT-2 without these settings")


def save_export(lm, vocab: CharVocab, export_dir: str | os.PathLike, meta: dict) -> Path:
    """Write a self-contained export folder atomically (``export.tmp/``, then ``fsutil.replace_dir``:
    one atomic exchange with the old ``export/`` where the OS allows it, so plain transformers
    finds a complete ``export/`` at every moment).

    Args:
        lm: the model.
        vocab: its vocabulary.
        export_dir: the folder to (re)create.
        meta: extra facts for ``poetry_gpt.json`` (genre, n_ctx, step, …). Without ``cipai``, the 词牌
            patterns the run recorded (``run.json`` beside the export, ``data.cipai``) are added, so that
            ``generate --form 浣溪沙`` needs neither the RUN_DIR nor the DATA_DIR.
    """
    export = Path(export_dir)
    if "cipai" not in meta:
        meta = {**meta, "cipai": _run_cipai(export.parent)}
    tmp = export.with_name(export.name + ".tmp")
    old = export.with_name(export.name + ".old")
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


def _run_cipai(run_dir: Path) -> dict:
    """The 词牌 patterns ``run.json`` in ``run_dir`` records (``RunDir.write_run``), {} without any."""
    import json

    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("data", {}).get("cipai") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def resolve_export(path: str | os.PathLike) -> Path:
    """The export folder of a RUN_DIR, or ``path`` itself when it is an export folder.

    Args:
        path: a RUN_DIR or an export folder.
    """
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"{p}: no such folder; pass a RUN_DIR written by `poetry-gpt train` or its export/")
    # export.old exists only for an instant while the fallback swap (no atomic exchange) replaces export/
    for candidate in (p / "export", p, p / "export.old"):
        if (candidate / "config.json").is_file() and (candidate / "vocab.txt").is_file():
            return candidate
    raise RunDirError(f"{p}: no model export here (config.json + vocab.txt); train first with "
                      f"`poetry-gpt train --run {p}` or pass the run's export/ folder")


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
