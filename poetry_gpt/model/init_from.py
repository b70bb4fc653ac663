"""``train --init-from DIR``: the GPT-2 a run fine-tunes, loaded and fitted to the run's vocabulary.

DIR is a folder with ``config.json`` (model_type gpt2) and ``tf_model.h5``, ``*.safetensors`` or
``pytorch_model.bin`` (the last needs PyTorch): a run's export/, or a public Chinese GPT-2 checkpoint
with a BERT-style ``vocab.txt`` (mapped to our layout by ``data.vocab.load_base_vocab``).

The embedding (``wte``, tied to the LM head) is fitted to the run's vocabulary, which must start with
the folder's (same tokens, same ids: ``prepare --vocab DIR [--extend-vocab]``):

* row ``i < N_base`` is the folder's row for our id ``i`` (the same row, or for a BERT-style folder
  the row of the mapped token, ``BaseVocab.source_ids``);
* rows ``≥ N_base`` (characters ``--extend-vocab`` appended) start as the mean of rows ``< N_base``:
  deterministic, and a new character starts as an "average" character rather than noise.

Nothing here imports TensorFlow at import time.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..data.vocab import VOCAB_FILE, BaseVocab, CharVocab, load_base_vocab
from ..errors import PoetryGPTError, RunDirError


def load_init(init_from, vocab: CharVocab, config: RunConfig):
    """Load an HF GPT-2 folder for fine-tuning, refusing mismatched vocabularies or shapes and settings that
    the training and sampling paths do not compute (``model.check_supported``); its dropout becomes the run's.

    Args:
        init_from: the folder (``save_pretrained`` files, TF weights or safetensors; a BERT-style vocab.txt).
        vocab: the run's vocabulary: the folder's, or the folder's followed by new characters.
        config: the run configuration (its shape must match the folder's).
    """
    from ..model.gpt2 import check_agreement

    path = Path(init_from)
    from_pt = check_folder(path)
    base = _base_vocab(path, vocab)
    lm = _from_pretrained(path, from_pt, config)
    if base is None:
        check_agreement(lm, vocab, str(path))
    else:
        if lm.config.vocab_size != base.source_size:
            raise RunDirError(f"--init-from {path}: the model has {lm.config.vocab_size} token rows but its "
                              f"{VOCAB_FILE} has {base.source_size} lines; the folder is inconsistent")
        if base.source_ids is not None or vocab.size != base.size:
            lm = fit_embedding(lm, base, vocab)
    c = lm.config
    if (c.n_layer, c.n_embd, c.n_head) != (config.model.n_layer, config.model.n_embd, config.model.n_head) \
            or c.n_positions < config.model.n_ctx:
        raise RunDirError(f"--init-from {path}: model shape (layers {c.n_layer}, width {c.n_embd}, heads {c.n_head}, "
                          f"context {c.n_positions}) differs from --config; pick the matching preset")
    return lm


def check_folder(path: Path) -> bool:
    """Refuse a folder that is not a GPT-2 checkpoint; True when its only weights are ``pytorch_model.bin``.

    ``tf_model.h5`` and ``*.safetensors`` (TensorFlow or PyTorch format) load without PyTorch;
    ``pytorch_model.bin`` needs it.

    Args:
        path: the ``--init-from`` folder.
    """
    from ..fsutil import read_json

    if not (path / "config.json").is_file():
        raise RunDirError(f"--init-from {path}: not a GPT-2 checkpoint folder (no config.json); pass a folder "
                          "written by save_pretrained, e.g. a run's export/")
    try:
        model_type = read_json(path / "config.json").get("model_type")
    except (OSError, ValueError, AttributeError):
        raise RunDirError(f"--init-from {path}: config.json is not readable JSON; pass a folder written by "
                          "save_pretrained, e.g. a run's export/") from None
    if model_type != "gpt2":
        raise RunDirError(f"--init-from {path}: config.json describes a {model_type!r} model, not GPT-2; pass a GPT-2 "
                          "folder, e.g. a run's export/")
    if (path / "tf_model.h5").is_file() or any(path.glob("*.safetensors")):
        return False
    if not (path / "pytorch_model.bin").is_file():
        raise RunDirError(f"--init-from {path}: no weights (tf_model.h5, *.safetensors or pytorch_model.bin) "
                          "in the folder")
    if not _torch_installed():
        raise RunDirError(f"--init-from {path}: only pytorch_model.bin, which needs PyTorch (not installed); "
                          "install torch, or convert the weights to model.safetensors where it is")
    return True


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _base_vocab(path: Path, vocab: CharVocab) -> BaseVocab | None:
    """The folder's vocabulary (None without ``vocab.txt``), refused unless ``vocab`` starts with it."""
    if not (path / VOCAB_FILE).is_file():
        return None
    try:
        base = load_base_vocab(path)
    except PoetryGPTError as exc:
        raise RunDirError(f"--init-from {exc}") from None
    if not vocab.starts_with(base.vocab):
        raise RunDirError(f"--init-from {path}: its vocabulary differs from the DATA_DIR's (whose first {base.size} "
                          f"tokens must be its {base.size}, with the same ids); prepare the data with "
                          f"`poetry-gpt prepare RAW --vocab {path}` (add --extend-vocab to give new characters ids)")
    return base


def _from_pretrained(path: Path, from_pt: bool, config: RunConfig):
    """``TFGPT2LMHeadModel.from_pretrained`` of the folder, checked, with the run's dropout.

    ``from_pt`` only for ``pytorch_model.bin`` (it imports torch); PyTorch-format safetensors are read
    as numpy arrays (``_load_pt_safetensors``), TensorFlow weights by ``from_pretrained``.
    """
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from ..model.gpt2 import check_supported

    try:
        gpt2 = GPT2Config.from_pretrained(str(path))
        check_supported(gpt2, f"--init-from {path}")
        # the fast training path applies one rate everywhere: the run's --dropout, not the folder's
        gpt2.resid_pdrop = gpt2.embd_pdrop = gpt2.attn_pdrop = config.model.dropout
        pt_files = _pt_safetensors(path)
        if pt_files:
            return _load_pt_safetensors(pt_files, gpt2, path)
        return TFGPT2LMHeadModel.from_pretrained(str(path), from_pt=from_pt, config=gpt2)
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"--init-from {path}: not loadable as GPT-2 ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def _pt_safetensors(path: Path) -> list[Path]:
    """The folder's ``*.safetensors`` files when they are PyTorch-format (metadata ``format: pt``), else []."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="numpy") as archive:
            if (archive.metadata() or {}).get("format") != "pt":
                return []
    return files


def _load_pt_safetensors(files: list[Path], gpt2, path: Path):
    """A ``TFGPT2LMHeadModel`` with the weights of PyTorch-format safetensors, read as numpy (no PyTorch).

    transformers 4.57's own path for them passes the ``safe_open`` archive where it iterates a dict and
    fails; the same conversion is given the arrays instead. A weight the files lack is refused.
    """
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import TFGPT2LMHeadModel
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    state = {}
    for f in files:
        state.update({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in load_file(str(f)).items()})
    lm = TFGPT2LMHeadModel(gpt2)
    lm, info = load_pytorch_state_dict_in_tf2_model(lm, state, allow_missing_keys=True, output_loading_info=True,
                                                    skip_logger_warnings=True)
    if info["missing_keys"]:
        raise RunDirError(f"--init-from {path}: the safetensors lack {len(info['missing_keys'])} weight(s) of the "
                          f"model config.json describes (first: {info['missing_keys'][0]})")
    return lm


def fit_embedding(lm, base: BaseVocab, vocab: CharVocab):
    """A copy of ``lm`` whose embedding has one row per token of ``vocab`` (see the module docstring).

    Every other weight is copied unchanged; the config gets ``vocab``'s size and special ids (and no
    ``tokenizer_class``: the export's tokenizer is ours, ``PreTrainedTokenizerFast``).

    Args:
        lm: the loaded ``TFGPT2LMHeadModel`` (the folder's vocabulary layout).
        base: the folder's vocabulary (``source_ids`` maps our ids to its rows).
        vocab: the run's vocabulary, starting with ``base.vocab``.
    """
    import copy

    import numpy as np
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel

    old = lm.transformer.wte.embeddings.numpy()
    rows = old[list(base.source_ids)] if base.source_ids is not None else old[:base.size]
    new_rows = np.repeat(rows.astype(np.float64).mean(axis=0, keepdims=True), vocab.size - base.size, axis=0)
    table = np.concatenate([rows, new_rows.astype(old.dtype)])
    cfg = copy.deepcopy(lm.config)
    cfg.vocab_size = vocab.size
    cfg.bos_token_id = cfg.eos_token_id = vocab.sep_id
    cfg.pad_token_id = vocab.pad_id
    cfg.tokenizer_class = None
    grown = TFGPT2LMHeadModel(cfg)
    grown(tf.zeros([1, 2], tf.int32))
    old_weights = {_relative(v.name): v for v in lm.weights}
    wte = _relative(grown.transformer.wte.embeddings.name)
    for v in grown.weights:
        v.assign(table if _relative(v.name) == wte else old_weights[_relative(v.name)])
    return grown


def _relative(name: str) -> str:
    """A weight's name without the model's own scope (``tfgpt2lm_head_model_3/``)."""
    return name.split("/", 1)[-1]
