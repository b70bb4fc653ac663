"""The few sample poems ``train`` writes after each epoch (and ``pipeline`` at its end), from the model in memory.

They are drawn by the sampler's programs (``PoemGenerator``, as plain TensorFlow graphs) with the default
``SamplingConfig``. The generator is built once per model object and reused across epochs: its programs read
the model's variables at each call, so every epoch samples with the weights it ended with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data.corpus import prompt_prefix
from ..data.vocab import CharVocab
from ..sampling import SamplingConfig
from ..verse.forms import CLOSE
from .generator import Export, PoemGenerator
from .planning import Row

_GENERATORS: dict = {}  # id(lm) -> PoemGenerator; the last two models (a run, and its reloaded export)


def sample_poems(lm, vocab: CharVocab, titles: Sequence[str], genre: str, n_ctx: int, seed: int = 0,
                 tuning=None) -> list[str]:
    """Sample one poem per title (an empty title lets the model write one).

    Args:
        lm: a ``TFGPT2LMHeadModel`` (in training or loaded).
        vocab: its vocabulary.
        titles: one title per sample (characters outside the vocabulary are read as [UNK]).
        genre: the genre word of the prompt.
        n_ctx: the model context.
        seed: seed of the first poem (poem i uses seed + i).
        tuning: the ``model.peft.Tuning`` of a ``--tune`` run in training, or None.

    Returns:
        Corpus-style lines; one that ran out of context without 】 is prefixed ``[unclosed] ``.
    """
    gen = _generator(lm, vocab, genre, tuning)
    config = SamplingConfig(seed=seed, batch_size=max(len(titles), 1))
    _, tables = gen.tables.get(None, None, False)
    rows = []
    for i, title in enumerate(titles):
        prompt = prompt_prefix(title, genre) if title else ""
        rows.append(Row(prompt, seed + i, n_ctx - 1 - len(prompt), gen.tables.free.initial_state(prompt)))
    samples = gen.decode(rows, config, tables, config.batch_size)
    return [s.text if s.text.endswith(CLOSE) else "[unclosed] " + s.text for s in samples]


def _generator(lm, vocab: CharVocab, genre: str, tuning=None) -> PoemGenerator:
    """The generator of ``lm`` (built on its first use; its genre is the one asked for)."""
    gen = _GENERATORS.get(id(lm))
    if gen is None or gen.model is not lm or gen.vocab is not vocab or gen.export.tuning is not tuning:
        while len(_GENERATORS) >= 2:
            _GENERATORS.pop(next(iter(_GENERATORS)))
        # plain graphs, not XLA: a few poems per epoch do not repay XLA's longer compile of a fresh model
        gen = PoemGenerator.from_export(Export(Path("<in memory>"), lm, vocab, {}, tuning), jit_compile=False)
        _GENERATORS[id(lm)] = gen
    gen.export.meta["genre"] = genre
    return gen
