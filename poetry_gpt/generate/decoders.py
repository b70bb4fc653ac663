"""Turn planned rows into sampled ids: the ``Decoder`` interface, the compiled one and the eager reference.

``PoemGenerator`` plans rows (prompt, seed, budget, form state) and hands them to a decoder; the decoder
returns the ids each row drew, and the generator turns them into ``Sample`` results. Two decoders:

* ``CompiledDecoder`` (the default): the XLA ``Sampler`` with a fixed-size KV cache, batches of
  ``batch_rows`` rows, free sampling and every form through the same program, streaming.
* ``EagerDecoder``: transformers' eager ``model.generate`` (slow; the benchmarks' baseline, ``--eager``).
  Its TensorFlow generate has no min-p and no form automaton, so it takes free sampling only.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..data.vocab import PAD_ID, SEP_ID, UNK_ID
from ..errors import OptionError
from ..memory import release_freed_memory
from ..sampling import SamplingConfig
from . import constraints

UNPENALISED = set("，。？！；：、【】 ")  # a poem repeats its punctuation by design: no repetition penalty


@dataclass
class Drawn:
    """The ids one row drew (cut to its budget) and the wall time of the batch it ran in."""

    ids: list
    seconds: float


class Decoder(Protocol):
    """What ``PoemGenerator`` needs from a decoder."""

    def check(self, config: SamplingConfig) -> None:
        """Raise ``OptionError`` for options this decoder cannot honour (before any planning)."""

    def decode(self, rows: Sequence, config: SamplingConfig, tables, batch_size: int,
               on_tokens: Callable[[int, list], None] | None = None) -> list[Drawn]:
        """The ids of each planned row (``generator.Row``), in order."""


def batch_rows(rows: int, batch_size: int, base: int = 2) -> int:
    """Rows of each compiled batch: the next power of ``base`` ≥ ``rows``, at most ``batch_size``.

    Rounding up (the extra rows are inactive padding) keeps the number of compiled programs,
    and so the compile time and memory, small when ``-n`` varies, e.g. in ``chat``.

    Args:
        rows: samples asked for.
        batch_size: the most rows run together.
        base: 2 (1, 2, 4, 8, …) or more: fewer programs (each keeps tens of MB), more padding.
    """
    size = 1
    while size < rows:
        size *= base
    return min(batch_size, size)


def batch_sizes(batch_size: int, base: int = 2) -> list[int]:
    """Every batch size ``batch_rows`` gives up to ``batch_size`` (the programs to compile ahead), smallest first.

    Args:
        batch_size: the most rows run together.
        base: as in ``batch_rows``.
    """
    return sorted({batch_rows(rows, batch_size, base) for rows in range(1, batch_size + 1)})


class CompiledDecoder:
    """The compiled sampler (``sampler.Sampler``) over a ``CachedGPT2`` view of the model.

    Programs are compiled on first use: the decode loop once per batch size (a power of
    ``batch_base``, see ``batch_rows``) and top-k cap (16, 64, all), shared by free sampling and every
    form; the prompt pass once per (batch size, prompt bucket of 16 tokens). ``batch_base`` is 2; a
    server that compiles its batch sizes ahead sets a larger one (fewer programs in memory).

    Args:
        model: a ``TFGPT2LMHeadModel`` (its variables are read at each call, so a model in training
            samples with its current weights).
        vocab: its ``CharVocab``.
        stop_id: 】's id (None: rows run their whole budget).
        compute_dtype: "float32" (default; bfloat16 was not faster under XLA on CPU).
        jit_compile: XLA-compile the programs (see ``Sampler``).
        tuning: the ``model.peft.Tuning`` the programs compute (``CachedGPT2(..., tuning=)``), or None.
    """

    def __init__(self, model, vocab, stop_id: int | None, compute_dtype: str = "float32", jit_compile: bool = True,
                 tuning=None):
        import tensorflow as tf

        from ..model.cached_gpt2 import CachedGPT2
        from .sampler import Sampler

        self.vocab = vocab
        punctuation = [i for i, t in enumerate(vocab.tokens) if t in UNPENALISED]
        self.sampler = Sampler(CachedGPT2(model, getattr(tf, compute_dtype), tuning=tuning), stop_id=stop_id,
                               banned_ids=(PAD_ID, UNK_ID, SEP_ID), unpenalised_ids=punctuation,
                               jit_compile=jit_compile)
        self.batch_base = 2

    def check(self, config: SamplingConfig) -> None:
        """Every option is supported."""

    def decode(self, rows, config: SamplingConfig, tables, batch_size: int, on_tokens=None) -> list[Drawn]:
        """Rows run ``batch_rows`` at a time in one compiled program for the longest budget; each row
        is cut to its own budget, so its poem is the one it gets alone (its seed decides it).

        Args:
            rows: planned rows.
            config: the draw options (``SamplingConfig.draw``).
            tables: the constraint tables (free sampling or a form).
            batch_size: the most rows run together.
            on_tokens: streaming: called as ``on_tokens(first_row, ids_per_row)`` every few decode steps
                with the ids each row of the running batch has drawn so far (cut to its budget).
        """
        B = batch_rows(len(rows), batch_size, self.batch_base)
        budget = max(r.budget for r in rows)
        drawn, traces = [], dict(self.sampler.traces)
        for start in range(0, len(rows), B):
            chunk = list(rows[start:start + B])
            pad = B - len(chunk)
            chunk = chunk + chunk[:1] * pad
            stream = None if on_tokens is None else functools.partial(_stream, on_tokens, start, chunk[:B - pad])
            t0 = time.perf_counter()
            result = self.sampler.run(
                [[SEP_ID] + self.vocab.encode(r.prompt) for r in chunk], [r.seed for r in chunk],
                max_new_tokens=budget, **config.draw(), active=[True] * (B - pad) + [False] * pad,
                constraint=constraints, constraint_state=_constraint_state([r.state for r in chunk], tables),
                on_tokens=stream)
            seconds = time.perf_counter() - t0
            drawn += [Drawn(ids[:row.budget].tolist(), seconds) for row, ids in zip(chunk, result.tokens[:B - pad])]
        if self.sampler.traces != traces:
            release_freed_memory()  # a new program was compiled: drop the compiler's scratch memory
        return drawn


def _stream(on_tokens, first_row: int, rows: Sequence, tokens) -> None:
    on_tokens(first_row, [ids[:row.budget].tolist() for row, ids in zip(rows, tokens)])


def _constraint_state(states, tables) -> tuple:
    import numpy as np
    import tensorflow as tf

    state = tf.constant(np.array([s for s, _ in states], np.int32))
    rhyme = tf.constant(np.array([r for _, r in states], np.int32).reshape(len(states), constraints.RHYME_WIDTH))
    return state, rhyme, tables


class EagerDecoder:
    """The same sampling through transformers' eager ``model.generate`` (slow; for benchmarks).

    Rows of one prompt run together in batches of ``batch_size``; each batch resets TensorFlow's
    global random seed to its first row's seed. Sampling streams differ from the compiled path
    (same seed ≠ same poem). The free-sampling rule (no 】 before 【, no second 【 after it) holds
    here too (``FreeRuleProcessor``). A row's budget is ``max_new_tokens`` or all that fits after
    its own prompt.

    Args:
        model: a ``TFGPT2LMHeadModel``.
        vocab: its ``CharVocab``.
        stop_id: 】's id.
        free: the free-sampling ``DecodeConstraint`` of ``vocab``.
    """

    def __init__(self, model, vocab, stop_id: int | None, free):
        self.model, self.vocab, self.stop_id, self.free = model, vocab, stop_id, free

    def check(self, config: SamplingConfig) -> None:
        """Refuse the options transformers' TensorFlow generate cannot follow (forms, min-p)."""
        if any((config.form, config.acrostic, config.rhyme, config.min_p, config.strict)):
            raise OptionError("--eager: --form/--acrostic/--rhyme/--strict/--min-p need the compiled sampler "
                              "(transformers' TensorFlow generate has no min-p); drop --eager")

    def decode(self, rows, config: SamplingConfig, tables, batch_size: int, on_tokens=None) -> list[Drawn]:
        """As ``CompiledDecoder.decode`` (``tables`` are the free ones; no streaming)."""
        import tensorflow as tf
        from transformers import TFLogitsProcessorList

        rule = TFLogitsProcessorList([FreeRuleProcessor(self.free, tables)])
        drawn = []
        for group in _eager_batches(rows, config.num_samples, batch_size):
            ids = [SEP_ID] + self.vocab.encode(group[0].prompt)
            n = len(group)
            t0 = time.perf_counter()
            # transformers' TF sampling reuses a ``seed`` argument at every step (the same noise for each
            # token: a flat distribution repeats one character); unseeded, it draws each step's seed from
            # TensorFlow's global generator, seeded here so that the batch stays reproducible
            tf.random.set_seed(group[0].seed)
            out = self.model.generate(
                tf.constant([ids] * n), attention_mask=tf.ones([n, len(ids)], tf.int32),
                do_sample=config.top_k > 1, top_k=config.top_k, top_p=config.top_p, temperature=config.temperature,
                repetition_penalty=config.repetition_penalty,
                max_new_tokens=config.max_new_tokens or self.model.config.n_positions - len(ids),
                eos_token_id=self.stop_id, pad_token_id=PAD_ID, suppress_tokens=[PAD_ID, UNK_ID, SEP_ID],
                logits_processor=rule)
            seconds = time.perf_counter() - t0
            drawn += [Drawn(row.tolist(), seconds) for row in out.numpy()[:, len(ids):]]
        return drawn


def _eager_batches(rows: Sequence, num_samples: int, batch_size: int) -> list[list]:
    """The rows of each opening (``num_samples`` consecutive rows) in chunks of at most ``batch_size``."""
    batches: dict = {}
    for k, row in enumerate(rows):
        batches.setdefault((k // num_samples, k % num_samples // batch_size), []).append(row)
    return list(batches.values())


class FreeRuleProcessor:
    """The free-sampling automaton (``constraints.free_constraint``) as a transformers TF logits processor, for
    the eager path: each row's state is walked from the tokens written so far (prompt included), then
    the compiled path's own mask (``constraints.apply_constraint_tf``) is applied to the scores.

    Args:
        constraint: a ``DecodeConstraint`` without rhyme positions (the free one).
        tables: its ``as_tensors()``.
    """

    def __init__(self, constraint, tables):
        self.constraint, self.tables = constraint, tables

    def __call__(self, input_ids, scores, cur_len):
        """Mask ``scores`` [B, V] after the first ``cur_len`` tokens of ``input_ids`` [B, T] (eager tensors)."""
        import numpy as np
        import tensorflow as tf

        written = np.asarray(input_ids)[:, :int(cur_len)]
        state = np.zeros(len(written), np.int32)
        for column in written.T:
            state = self.constraint.next_state[state, column]
        return constraints.apply_constraint_tf(scores, tf.constant(state),
                                               tf.fill([len(written), constraints.RHYME_WIDTH], -1), self.tables)
