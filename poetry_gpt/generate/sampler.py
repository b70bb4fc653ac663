"""The compiled decode loop: GPT-2 with a fixed-size KV cache under XLA.

``transformers``' TF GPT-2 grows its cache with ``tf.concat`` (XLA generation
pads it and then shifts slices around). This module instead reads the weights
of a ``TFGPT2LMHeadModel`` and runs its own forward pass with a cache of fixed
shape ``[batch, heads, n_ctx, head_dim]`` per layer, written in place one slot a
step. Two ``tf.function(jit_compile=True)`` programs do the work:

* ``prefill``: the prompts, right-padded to a length bucket (a multiple of
  ``BUCKET``), in one pass; fills the cache and returns the logits after each
  prompt's last real token. Causal attention means the padding never leaks into
  the real positions, so no attention mask is needed here. One program per
  ``(batch, bucket)``.
* ``decode``: a ``tf.while_loop`` that samples a token, writes it at slot
  ``length + i`` of its own row, and runs one step. Every shape is fixed by
  ``(batch, n_ctx, top-k cap, constraint tables)``, so a new opening never
  recompiles it;
  ``top_k``, ``top_p``, ``min_p``, temperature, repetition penalty, ``max_new_tokens`` and
  the per-row seeds are tensors. It exits early when every row has emitted the
  stop token (】). ``run(on_tokens=...)`` runs it in segments of ``STREAM_SEGMENT`` steps (the loop
  state goes out and back in; the same program, the same tokens) so a server can stream a poem. From
  batch 16 on the loop runs in two cache views (``decode_views``): while every row still writing is below
  slot 32 a step attends over those 32 slots only, then over all ``n_ctx``, each view a loop of its own
  in the same program (a poem's tokens are those of the whole-cache loop).

``run`` keeps the cache in place: when the network can say its cache's shape (``cache_spec``) and the
programs are XLA-compiled, runs keep their cache in variables (``cache_slots``: a set made for the largest batch
so far also serves smaller batches, from its first rows); the prompt pass writes into them and the decode loop
reads, updates and writes them back inside its program, which XLA compiles to updates of those buffers. The
cache then exists once during a run, not three times (the prompt pass's output, the loop's copy of it and the
loop's output: TensorFlow cannot hand a program's input buffer to it), which was most of a server's memory peak
at batch 32. Runs take turns (a lock), since they share the variables. ``prefill`` and ``decode`` stay pure
functions of tensors, for callers that trace them into a SavedModel.

Sampling per step: the optional constraint (a mask from ``poetry_gpt.verse.forms``,
its per-row state advanced after the draw), repetition penalty (as in
transformers: divide positive logits of already-seen tokens by the penalty,
multiply negative ones), banned ids (``[PAD]``/``[UNK]``/``[SEP]``), top-k over the
``kcap`` best candidates, temperature, top-p (nucleus over the top-k) and min-p (drop candidates below
min_p times the best one's probability), then a
Gumbel-max draw whose noise hashes ``(row seed, step, candidate)``
(``stateless_gumbel``): a row's poem depends only on its own seed and the
options, not on its batch mates, and the batch is never unrolled.
Repetition-penalty "seen" sets skip ``unpenalised_ids`` (punctuation).
``top_k == 1`` is greedy. When every token is a candidate (top-k at least the vocabulary)
and top-p is off, the draw needs no sort: min-p becomes a threshold on the logits
(``_draw_unsorted``), much faster than sorting the whole vocabulary.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from ..model.cached_gpt2 import NEG, CachedGPT2

BUCKET = 16
#: decode steps between two ``on_tokens`` calls of a streaming ``Sampler.run``
STREAM_SEGMENT = 8
#: the short cache view a batched decode step attends over while every row still writing is below it
FIRST_VIEW = 32
#: batches from this size on decode in two views (``decode_views``); smaller ones gain less (batch 8: 12%,
#: batch 1: nothing) and each view is another loop body to compile and keep (~40 MB at the ``small`` shape)
VIEW_MIN_BATCH = 16


def bucket_length(length: int, n_ctx: int) -> int:
    """The prefill width for a prompt of ``length`` tokens: the next multiple of ``BUCKET`` (≤ n_ctx).

    Args:
        length: the longest prompt of the batch, in tokens.
        n_ctx: the model's context length.
    """
    return min(n_ctx, -(-length // BUCKET) * BUCKET)


def decode_views(batch: int, n_ctx: int) -> tuple[int, ...]:
    """The cache views the decode loop steps through: ``(FIRST_VIEW, n_ctx)`` from batch 16 on, else ``(n_ctx,)``.

    While every row still writing is below slot 32, a step attends over those 32 cache slots only; then the
    loop goes on over the whole cache. Attention over all ``n_ctx`` slots is a good part of a batched step
    (``small``, batch 32: 14.2 ms a step over 128 slots, 12.0 over 32), and a 五绝 never leaves the first
    view. More views (64, 128, …) would save a little more on long poems, but each is another loop body in
    every compiled program: memory a server keeps (README, Performance: ``serve`` under load).

    Args:
        batch: rows decoded together.
        n_ctx: the model's context length.
    """
    if batch >= VIEW_MIN_BATCH and FIRST_VIEW < n_ctx:
        return FIRST_VIEW, n_ctx
    return (n_ctx,)


def top_k_cap(top_k: int, vocab_size: int) -> int:
    """How many candidates the compiled sampler keeps: 16, 64 or the whole vocabulary.

    ``top_k`` itself is a tensor; only crossing one of these caps compiles a new program.

    Args:
        top_k: the requested top-k.
        vocab_size: the model's vocabulary size.
    """
    for cap in (16, 64):
        if top_k <= cap:
            return min(cap, vocab_size)
    return vocab_size


def row_seeds(seeds):
    """Per-row seeds (ints, an array or an int64 tensor) as the int32 ``[B]`` tensor the sampler hashes.

    Args:
        seeds: one integer per row (any sign; taken modulo 2**31 - 1).
    """
    return tf.cast(tf.math.floormod(tf.cast(seeds, tf.int64), 2**31 - 1), tf.int32)


@dataclass
class DecodeResult:
    """What one ``Sampler.run`` produced.

    Args:
        tokens: ``[batch, n]`` sampled ids; after a row's stop token the rest is ``[PAD]``.
        steps: how many decode steps ran (≤ ``max_new_tokens``).
    """

    tokens: np.ndarray
    steps: int


def _mix32(x):
    """lowbias32 (C. Wellons): a bijective uint32 hash with full avalanche."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16)) * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15)) * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def stateless_gumbel(seeds, step, n):
    """Gumbel noise ``[B, n]`` that depends only on (row seed, step, column): counter-based, no state.

    One ``tf.random`` call per row would unroll the batch into the program (compile time grows
    with the batch); hashing the counters keeps it one vectorised op whatever the batch size.

    Args:
        seeds: ``[B]`` int32 row seeds.
        step: scalar int32.
        n: Python int, columns.
    """
    golden = tf.constant(0x9E3779B9, tf.uint32)
    h = _mix32(tf.cast(seeds, tf.uint32))[:, None]
    h = _mix32(tf.bitwise.bitwise_xor(h, tf.cast(step, tf.uint32) * golden + 1))
    h = _mix32(tf.bitwise.bitwise_xor(h, tf.cast(tf.range(n), tf.uint32)[None, :] * golden + 0x632BE5AB))
    u = (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -tf.math.log(-tf.math.log(u))


def draw_tokens(logits, seen, seeds, step, *, top_k, top_p, temperature, penalty, kcap, banned_bias, min_p=0.0):
    """Draw one token per row (the sampling half of a decode step).

    Args:
        logits: ``[B, V]`` float32.
        seen: ``[B, V]`` bool, tokens already in the row (for the repetition penalty).
        seeds: ``[B]`` int32 row seeds.
        step: scalar int32, the decode step (second half of each row's seed).
        top_k: scalar int32 ≥ 1 (1 = greedy).
        top_p: scalar float32 in (0, 1].
        min_p: scalar float32 in [0, 1): drop candidates less likely than ``min_p`` times the most
            likely one (0 = off).
        temperature: scalar float32 > 0.
        penalty: scalar float32 > 0 (1 = off).
        kcap: Python int, how many candidates to keep (≥ top_k).
        banned_bias: ``[V]`` float32, ``NEG`` for ids never to sample, else 0.

    Returns:
        ``[B]`` int32 token ids.
    """
    penalised = tf.where(logits > 0, logits / penalty, logits * penalty)
    logits = tf.where(seen, penalised, logits) + banned_bias
    sorted_draw = lambda: _draw_sorted(logits, seeds, step, top_k, top_p, temperature, min_p, kcap)  # noqa: E731
    if kcap < logits.shape[-1]:
        return sorted_draw()
    # every token is a candidate: unless top-k or top-p truncates, no sort is needed (a full sort of the
    # vocabulary costs more than the model's step at batch 16)
    return tf.cond((top_k >= kcap) & (top_p >= 1.0),
                   lambda: _draw_unsorted(logits, seeds, step, temperature, min_p), sorted_draw)


def _draw_sorted(logits, seeds, step, top_k, top_p, temperature, min_p, kcap: int):
    """``draw_tokens`` over the ``kcap`` best candidates, in order: top-k, top-p and min-p."""
    vals, idx = tf.math.top_k(logits, k=kcap, sorted=True)
    rank = tf.range(kcap)[None, :]
    vals = tf.where(rank < top_k, vals / temperature, NEG)
    probs = CachedGPT2._softmax(vals)
    before = tf.cumsum(probs, axis=-1, exclusive=True)
    keep = (before < top_p) & (probs >= min_p * probs[:, :1])
    vals = tf.where(keep | (rank == 0), vals, NEG)
    picks = tf.argmax(vals + stateless_gumbel(seeds, step, kcap), axis=-1, output_type=tf.int32)  # Gumbel-max
    choice = tf.where(top_k == 1, 0, picks)
    return tf.gather(idx, choice, batch_dims=1)


def _draw_unsorted(logits, seeds, step, temperature, min_p):
    """``draw_tokens`` over the whole vocabulary without sorting: min-p (p ≥ min_p · p_max) is the
    threshold ``logit ≥ best + log(min_p)`` on the tempered logits; the best token always stays."""
    vals = logits / temperature
    best = tf.reduce_max(vals, axis=-1, keepdims=True)
    keep = (vals >= best + tf.math.log(tf.maximum(min_p, 1e-30))) | (vals >= best)
    vals = tf.where(keep, vals, NEG)
    return tf.argmax(vals + stateless_gumbel(seeds, step, vals.shape[-1]), axis=-1, output_type=tf.int32)


class Sampler:
    """Compiled batched sampling from a network with a KV cache.

    Args:
        net: a ``CachedGPT2`` (or any object with its ``weights``/``prefill``/``step`` methods and
            ``n_ctx``/``vocab_size`` attributes: tests use a fake one with fixed logits).
        stop_id: the id that ends a poem (】's id), or ``None`` to always run ``max_new_tokens``.
        banned_ids: ids never sampled (the special tokens).
        unpenalised_ids: ids the repetition penalty leaves alone (punctuation, which a poem repeats
            by design).
        jit_compile: compile the programs with XLA (fast per token, slow to compile); False runs the same
            programs as plain TensorFlow graphs (a few poems of a model in training).

    Example:
        >>> sampler = Sampler(CachedGPT2(model), stop_id=vocab.id_of("】"), banned_ids=[0, 1, 2])
        >>> result = sampler.run([[2, 15, 27]], seeds=[7], max_new_tokens=32)
    """

    def __init__(self, net, stop_id: int | None, banned_ids: Sequence[int] = (), unpenalised_ids: Sequence[int] = (),
                 jit_compile: bool = True):
        self.net = net
        self.stop_id = -1 if stop_id is None else int(stop_id)
        bias = np.zeros(self.net.vocab_size, np.float32)
        bias[list(banned_ids)] = NEG
        self.banned_bias = tf.constant(bias)
        self.penalisable = np.ones(self.net.vocab_size, bool)
        self.penalisable[list(unpenalised_ids)] = False
        self.traces = {"prefill": 0, "decode": 0}  # Python-side trace counts (tests, diagnostics)
        self.jit_compile = jit_compile
        self._prefill = tf.function(self._prefill_impl, jit_compile=jit_compile)
        self._decode = tf.function(self._decode_impl, jit_compile=jit_compile)
        self._prefill_in_place = tf.function(self._prefill_in_place_impl, jit_compile=jit_compile)
        self._decode_in_place = tf.function(self._decode_in_place_impl, jit_compile=jit_compile)
        self._slots: dict[int, Any] = {}  # batch size -> its cache variables (``cache_slots``)
        self._lock = threading.Lock()  # one ``run`` at a time: runs share the cache variables

    @property
    def n_ctx(self) -> int:
        return self.net.n_ctx

    # compiled programs --------------------------------------------------------------
    def _prefill_impl(self, ids, lengths):
        self.traces["prefill"] += 1
        logits, cache = self.net.prefill(self.net.weights(), ids, lengths)
        real = tf.range(ids.shape[1])[None, :] < lengths[:, None]  # [B, T]: the prompt, not its padding
        seen = tf.reduce_any(tf.one_hot(ids, self.net.vocab_size, on_value=True, off_value=False)
                             & real[:, :, None], axis=1)
        return logits, cache, seen & self.penalisable

    def _decode_impl(self, logits, cache, lengths, seeds, seen, done, options, constraint_in, kcap, constraint,
                     out):
        self.traces["decode"] += 1
        w = self.net.weights()
        top_k, top_p, temperature, penalty, max_new = options["top_k"], options["top_p"], \
            options["temperature"], options["penalty"], options["max_new"]
        min_p = options["min_p"]
        B, n_ctx = logits.shape[0], self.n_ctx
        state, rhyme, tables = constraint_in if constraint is not None else (tf.zeros([B]), tf.zeros([B]), ())

        def cond(view):
            def running(i, logits, cache, out, seen, done, state, rhyme):
                # rows still writing stay inside the view (a finished row's steps are never read)
                within = tf.reduce_max(tf.where(done, 0, lengths)) + i < view if view < n_ctx else True
                return (i < max_new) & ~tf.reduce_all(done) & within
            return running

        def body(view):
            return lambda *carry: step(view, *carry)

        def step(view, i, logits, cache, out, seen, done, state, rhyme):
            if constraint is not None:
                logits = constraint.apply_constraint_tf(logits, state, rhyme, tables)
            token = draw_tokens(logits, seen, seeds, i, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                                  penalty=penalty, kcap=kcap, banned_bias=self.banned_bias)
            token = tf.where(done, 0, token)
            if constraint is not None:
                state, rhyme = constraint.advance_tf(state, rhyme, token, tables)
            out = tf.tensor_scatter_nd_update(out, tf.stack([tf.range(B), tf.fill([B], i)], 1), token)
            seen = seen | (tf.one_hot(token, self.net.vocab_size, on_value=True, off_value=False) & self.penalisable)
            done = done | (token == self.stop_id)
            # the step after the budget's last token is never used; clamping keeps it inside the cache
            positions = tf.minimum(lengths + i, n_ctx - 1)
            if view < n_ctx:
                logits, cache = self.net.step(w, token, positions, cache, view=view)
            else:
                logits, cache = self.net.step(w, token, positions, cache)
            return i + 1, logits, cache, out, seen, done, state, rhyme

        # one loop per cache view, each going on from where the last stopped; ``start`` > 0 continues a run
        # segment by segment (``run(on_tokens=...)``): the carry comes back in
        carry = (options["start"], logits, cache, out, seen, done, state, rhyme)
        for view in decode_views(B, n_ctx):
            carry = tf.while_loop(cond(view), body(view), carry, maximum_iterations=n_ctx)
        i, logits, cache, out, seen, done, state, rhyme = carry
        return out, i, (logits, cache, seen, done, state, rhyme)

    def _prefill_in_place_impl(self, ids, lengths):
        """``_prefill_impl`` writing the cache into ``cache_slots``; returns ``()`` in its place."""
        logits, cache, seen = self._prefill_impl(ids, lengths)
        self._write_slots(ids.shape[0], cache)
        return logits, (), seen

    def _decode_in_place_impl(self, logits, cache, lengths, seeds, seen, done, options, constraint_in, kcap,
                              constraint, out):
        """``_decode_impl`` over the cache in ``cache_slots`` (its ``cache`` argument is the ``()`` that
        ``_prefill_in_place_impl`` returned, kept so that ``_run`` calls both decodes alike)."""
        B = logits.shape[0]
        out, i, carry = self._decode_impl(logits, self._read_slots(B), lengths, seeds, seen, done, options,
                                          constraint_in, kcap, constraint, out)
        self._write_slots(B, carry[1])
        return out, i, (carry[0], (), *carry[2:])

    def _read_slots(self, batch: int):
        """The cache of a ``batch``-row run: its slots' first ``batch`` rows (inside a program)."""
        return tf.nest.map_structure(lambda slot: slot.read_value()[:batch], self._slots[batch])

    def _write_slots(self, batch: int, cache) -> None:
        """Write a ``batch``-row run's cache into its slots' first ``batch`` rows (inside a program: in place)."""
        tf.nest.map_structure(lambda slot, value: (slot if slot.shape[0] == batch else slot[:batch]).assign(value),
                              self._slots[batch], cache)

    def cache_slots(self, batch: int):
        """The cache variables that ``batch``-row runs use (their first ``batch`` rows), or None when the network
        does not give its cache's shape (``net.cache_spec``) or the programs are not XLA-compiled (a model in
        training samples that way, inside its distribution strategy's scope, where a new variable would be the
        strategy's): ``run`` then passes the cache between its programs as tensors.

        The variables are made on first use and kept. A batch size takes the largest set made so far if it has
        rows enough, else a new set of its own size: a server that runs its largest batch first (``warm_up``)
        keeps one set. The programs capture their set; it is not passed in: TensorFlow copies a variable given to
        a compiled function as an argument, and keeps it alive with the program traced for it.

        Args:
            batch: the batch size.
        """
        spec = getattr(self.net, "cache_spec", None) if self.jit_compile else None
        if spec is not None and batch not in self._slots:
            rows = max(self._slots, default=0)
            self._slots[batch] = self._slots[rows] if rows >= batch else tf.nest.map_structure(
                lambda s: tf.Variable(tf.zeros(s.shape, s.dtype), trainable=False), spec(batch))
        return self._slots.get(batch)

    # the compiled programs, eager or traced into another function (``poetry_gpt.serve.saved_model``) --
    def options(self, top_k, top_p, min_p, temperature, repetition_penalty, max_new_tokens) -> dict:
        """The sampling options as the scalar tensors ``decode`` takes (numbers or scalar tensors).

        ``start`` (0) is the first step's index; a streaming ``run`` moves it and ``max_new`` segment by
        segment. ``top_k`` is capped at the vocabulary and ``temperature`` kept ≥ 1e-6 (0 would divide by zero).

        Args:
            top_k: ≥ 1.
            top_p: in (0, 1].
            min_p: in [0, 1).
            temperature: > 0.
            repetition_penalty: > 0.
            max_new_tokens: decode steps at most.
        """
        return {"top_k": tf.cast(tf.minimum(tf.cast(top_k, tf.int64), self.net.vocab_size), tf.int32),
                "top_p": tf.cast(top_p, tf.float32), "min_p": tf.cast(min_p, tf.float32),
                "temperature": tf.maximum(tf.cast(temperature, tf.float32), 1e-6),
                "penalty": tf.cast(repetition_penalty, tf.float32), "max_new": tf.cast(max_new_tokens, tf.int32),
                "start": tf.constant(0, tf.int32)}

    def prefill(self, ids, lengths):
        """The compiled prompt pass: ``(logits [B, V], cache, seen [B, V])``.

        Args:
            ids: ``[B, T]`` int32 prompts (each starts with [SEP]), right-padded; ``T`` a ``bucket_length``.
            lengths: ``[B]`` int32 real lengths.
        """
        return self._prefill(ids, lengths)

    def decode(self, logits, cache, seen, lengths, seeds, done, options: dict, kcap: int, constraint=None,
               constraint_state=None, out=None):
        """The compiled decode loop after ``prefill``: ``(tokens [B, n_ctx] int32, steps, carry)``.

        ``carry`` is ``(logits, cache, seen, done, state, rhyme)`` after the last step: passed back in
        with ``out`` and ``options["start"]`` = ``steps``, it continues the same run (streaming).

        Args:
            logits, cache, seen: what ``prefill`` returned.
            lengths: ``[B]`` int32 prompt lengths.
            seeds: ``[B]`` int32, from ``row_seeds``.
            done: ``[B]`` bool, rows that start finished (batch padding).
            options: from ``options``.
            kcap: ``top_k_cap`` of the (Python) top-k.
            constraint, constraint_state: as in ``run``.
            out: ``[B, n_ctx]`` tokens of the earlier segments (None: zeros, a new run).
        """
        if out is None:
            out = tf.zeros([logits.shape[0], self.n_ctx], tf.int32)
        return self._decode(logits, cache, lengths, seeds, seen, done, options,
                            constraint_state if constraint is not None else (), kcap, constraint, out)

    # driver ---------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], *, max_new_tokens: int,
            top_k: int = 10, top_p: float = 1.0, temperature: float = 1.0, repetition_penalty: float = 1.0,
            min_p: float = 0.0,
            active: Sequence[bool] | None = None, constraint: Any = None, constraint_state=None,
            on_tokens: Callable[[np.ndarray], None] | None = None, segment: int = STREAM_SEGMENT) -> DecodeResult:
        """Sample continuations of a batch of prompts (validated by the caller).

        Args:
            prompts: token ids per row (each starts with [SEP]); all ≤ ``n_ctx - max_new_tokens``.
            seeds: one int seed per row.
            max_new_tokens: decode steps at most.
            top_k: keep the k most likely tokens (1 = greedy).
            top_p: nucleus mass kept among them.
            min_p: keep only those at least this fraction as likely as the most likely (0 = off).
            temperature: logits are divided by it.
            repetition_penalty: > 1 discourages tokens already in the row.
            active: rows that matter; inactive rows (batch padding) start finished.
            constraint: an object with ``apply_constraint_tf(logits, state, rhyme_group, tables)`` and
                ``advance_tf(state, rhyme_group, token, tables) -> (state, rhyme_group)``, e.g. the
                ``poetry_gpt.verse.forms`` module; it is part of the program's cache key, so pass the same
                object each time (tables of another shape compile another program).
            constraint_state: ``(state [B], rhyme_group [B], tables)`` tensors for ``constraint``.
            on_tokens: called with the ``[B, steps]`` tokens drawn so far after every ``segment`` steps
                (streaming); the same compiled program runs the segments, so the tokens are exactly
                those of a run without it.
            segment: decode steps between ``on_tokens`` calls.
        """
        B = len(prompts)
        lengths = np.array([len(p) for p in prompts], np.int32)
        T = bucket_length(int(lengths.max()), self.n_ctx)
        ids = np.zeros([B, T], np.int32)
        for r, p in enumerate(prompts):
            ids[r, :len(p)] = p
        done = np.zeros(B, bool) if active is None else ~np.asarray(active, bool)
        options = self.options(top_k, top_p, min_p, temperature, repetition_penalty, max_new_tokens)
        with self._lock:
            return self._run(ids, lengths, row_seeds(seeds), done, options, top_k_cap(top_k, self.net.vocab_size),
                             max_new_tokens, constraint, constraint_state, on_tokens, segment)

    def _run(self, ids, lengths, seeds, done, options, kcap, max_new_tokens, constraint, constraint_state, on_tokens,
             segment) -> DecodeResult:
        """``run``'s programs, in place when ``cache_slots`` allows (arguments as ``run``'s, prepared)."""
        in_place = self.cache_slots(len(ids)) is not None
        logits, cache, seen = (self._prefill_in_place if in_place else self._prefill)(tf.constant(ids),
                                                                                      tf.constant(lengths))
        lengths, done = tf.constant(lengths), tf.constant(done)
        state, out, steps = constraint_state, tf.zeros([len(ids), self.n_ctx], tf.int32), 0
        decode = self._decode_in_place if in_place else self._decode
        while True:
            stop = max_new_tokens if on_tokens is None else min(steps + segment, max_new_tokens)
            options.update(start=tf.constant(steps, tf.int32), max_new=tf.constant(stop, tf.int32))
            out, i, (logits, cache, seen, done, s, g) = decode(
                logits, cache, lengths, seeds, seen, done, options,
                state if constraint is not None else (), kcap, constraint, out)
            steps = int(i)
            if constraint is not None:
                state = (s, g, constraint_state[2])
            if on_tokens is not None:
                on_tokens(out.numpy()[:, :steps])
            if steps < stop or steps >= max_new_tokens:  # every row finished, or the budget is spent
                break
        return DecodeResult(out.numpy()[:, :steps], steps)
