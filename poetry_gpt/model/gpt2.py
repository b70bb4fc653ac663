"""The model: transformers' ``TFGPT2LMHeadModel`` built from a ``ModelConfig`` and a vocabulary, and checked."""
from __future__ import annotations

from ..config import ModelConfig
from ..data.vocab import CharVocab
from ..errors import RunDirError


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
    """A freshly initialised, built ``TFGPT2LMHeadModel``, its weights drawn as GPT-2 draws them.

    Only new models come from here: ``--init-from`` and exports load with ``from_pretrained``, and a resume
    or a checkpoint read restores every variable over this initialisation.

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
    init_weights_as_gpt2(lm, seed)
    return lm


def init_weights_as_gpt2(lm, seed: int) -> None:
    """Redraw every kernel and embedding as GPT-2 does: normal(0, 0.02), residual projections 0.02/sqrt(2·n_layer).

    transformers' PyTorch GPT-2 and nanoGPT draw the embeddings and kernels from a plain normal of std
    ``initializer_range`` and scale each block's residual projections (``attn.c_proj``, ``mlp.c_proj``) so that
    the residual stream's variance does not grow with depth. transformers' TensorFlow GPT-2 draws from a
    *truncated* normal (effective std 0.0176) and does not scale; with those weights ``small`` learned measurably
    less in 1,000 steps (README, Performance: learning per step). Biases stay zeros, layer norms ones and zeros.

    Args:
        lm: a newly built ``TFGPT2LMHeadModel`` (never a loaded one: this replaces its weights).
        seed: seed of the draw.
    """
    import math

    import tensorflow as tf

    std = lm.config.initializer_range
    projection_std = std / math.sqrt(2 * lm.config.n_layer)
    draws = tf.random.Generator.from_seed(seed)
    kernels = [(lm.transformer.wte.embeddings, std), (lm.transformer.wpe.embeddings, std)]
    for block in lm.transformer.h:
        kernels += [(block.attn.c_attn.weight, std), (block.attn.c_proj.weight, projection_std),
                    (block.mlp.c_fc.weight, std), (block.mlp.c_proj.weight, projection_std)]
    for variable, stddev in kernels:
        variable.assign(draws.normal(variable.shape, stddev=stddev, dtype=variable.dtype))


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
