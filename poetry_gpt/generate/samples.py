"""A few sample poems from an in-memory model, for the per-epoch report of ``train``.

Deliberately simple (no KV cache; one fixed-shape compiled forward per new character)
so it works on any model mid-training; the fast sampler for users is ``generate.py``.
Both follow the same free-sampling rule (``forms.free_constraint``): no 】 before 【,
no second 【 (nor a special token) after it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.corpus import CLOSE, prompt_prefix
from .constraints import free_constraint
from .generator import DEFAULT_MIN_P, DEFAULT_TOP_K
from ..data.vocab import CharVocab


def sample_poems(lm, vocab: CharVocab, titles: Sequence[str], genre: str, n_ctx: int, seed: int = 0,
                 top_k: int = DEFAULT_TOP_K, min_p: float = DEFAULT_MIN_P) -> list[str]:
    """Sample one poem per title (an empty title lets the model write one).

    Args:
        lm: a ``TFGPT2LMHeadModel``.
        vocab: its vocabulary.
        titles: one title per sample.
        genre: the genre word of the prompt.
        n_ctx: the model context.
        seed: sampling seed.
        top_k: sample among the k most likely characters.
        min_p: of those, drop the ones less likely than ``min_p`` times the most likely one.

    Returns:
        Corpus-style lines; one that ran out of context without 】 is prefixed ``[unclosed] ``.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    prompts = [[vocab.sep_id] + (vocab.encode(prompt_prefix(t, genre)) if t else []) for t in titles]
    batch = np.full((len(prompts), n_ctx), vocab.pad_id, dtype=np.int32)
    lengths = np.array([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        batch[i, :len(p)] = p
    close_id = vocab.id_of(CLOSE)
    done = np.zeros(len(prompts), dtype=bool)
    rule = free_constraint(vocab)  # header, body, done; it also never allows the special tokens
    states = [rule.initial_state(prompt_prefix(t, genre) if t else "") for t in titles]  # (state, rhyme)

    @tf.function(reduce_retracing=True)
    def next_logits(tokens, positions):
        logits = lm(input_ids=tokens, training=False, use_cache=False).logits
        return tf.cast(tf.gather(logits, positions, batch_dims=1), tf.float32)

    while not done.all() and lengths.max() < n_ctx:
        logits = next_logits(tf.constant(batch), tf.constant(lengths - 1)).numpy()
        for i in np.flatnonzero(~done):
            if lengths[i] >= n_ctx:
                done[i] = True
                continue
            logits[i, ~rule.allowed_tokens(*states[i])] = -np.inf
            k = min(top_k, logits.shape[1] - 1)
            top = np.argpartition(-logits[i], k)[:k]
            p = np.exp(logits[i, top] - logits[i, top].max())
            p[p < min_p] = 0.0  # p is relative to the most likely candidate (1.0): min-p
            token = int(rng.choice(top, p=p / p.sum()))
            states[i] = rule.advance(*states[i], token)
            batch[i, lengths[i]] = token
            lengths[i] += 1
            done[i] = token == close_id
    out = []
    for i in range(len(prompts)):
        text = vocab.decode(batch[i, 1:lengths[i]].tolist())
        out.append(text if text.endswith(CLOSE) else "[unclosed] " + text)
    return out
