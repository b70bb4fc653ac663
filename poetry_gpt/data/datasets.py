"""Reading a DATA_DIR into ``tf.data``: packed training rows, and validation windows scored once a character.

Reading packs poems for training: each poem is preceded by ``[SEP]``, the
shuffled poems are concatenated into one stream and cut into rows of exactly
``n_ctx`` tokens (nanoGPT's way), so a training batch holds no padding. A poem
longer than the context continues in the next row. Validation reads one poem per
row (padded, pads masked with label −100); a poem longer than the context is
scored with overlapping windows, each character predicted once with at least
``n_ctx − stride`` characters of context (``eval_windows``), so its loss is the
poem-level cross-entropy.
"""
from __future__ import annotations

from ..errors import DataDirError
from .manifest import Manifest

IGNORE_INDEX = -100


def batches_per_pass(manifest: Manifest, batch_size: int, n_ctx: int) -> int:
    """How many packed training batches one pass over the training split yields.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
    """
    stream = manifest.tokens("train") + manifest.poems("train")
    return (stream // n_ctx) // batch_size


def _parse_ids(serialized):
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, {"ids": tf.io.RaggedFeature(tf.int64)})
    return tf.cast(parsed["ids"], tf.int32)


def _with_sep(ragged, sep_id: int):
    import tensorflow as tf

    n = ragged.nrows()
    sep = tf.RaggedTensor.from_tensor(tf.fill([n, 1], tf.constant(sep_id, tf.int32)), row_splits_dtype=ragged.row_splits.dtype)
    return tf.concat([sep, ragged], axis=1)


def _stateless_permutation(n, seed):
    """A permutation of ``range(n)`` from ``seed`` (int64 [2]) only: Philox keys, stable argsort.

    Unlike ``Dataset.shuffle(seed=...)``, it does not depend on TensorFlow's global seed
    (``tf.random.set_seed``) or on the device, so a resumed run sees the same order.
    """
    import tensorflow as tf

    keys = tf.random.stateless_uniform([n], seed=seed, minval=None, maxval=None, dtype=tf.int64, alg="philox")
    return tf.argsort(keys, stable=True)


def _pass_dataset(files: list[str], n_ctx: int, sep_id: int, seed, shuffle_buffer: int):
    """One shuffled pass over the training shards, packed into rows of ``n_ctx`` tokens.

    The shard order is permuted, then the poems are read in windows of ``shuffle_buffer``
    and each window is permuted (one window, a uniform shuffle, when the split fits in the
    buffer). Both permutations come from ``seed`` alone (``_stateless_permutation``).
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    files_t = tf.constant(files)
    if len(files) > 1:
        files_t = tf.gather(files_t, _stateless_permutation(len(files), tf.stack([seed, tf.constant(-1, tf.int64)])))
    ds = tf.data.Dataset.from_tensor_slices(files_t)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=1, deterministic=True)

    def window(index, serialized):
        order = _stateless_permutation(tf.shape(serialized)[0], tf.stack([seed, index]))
        return _with_sep(tf.gather(_parse_ids(serialized), order), sep_id).flat_values

    ds = ds.batch(shuffle_buffer).enumerate().map(window)

    def carry(rest, chunk):
        buf = tf.concat([rest, chunk], axis=0)
        n_rows = tf.shape(buf)[0] // n_ctx
        rows = tf.reshape(buf[: n_rows * n_ctx], [n_rows, n_ctx])
        return buf[n_rows * n_ctx:], rows

    ds = ds.scan(tf.zeros([0], tf.int32), carry)
    return ds.unbatch()


def train_dataset(manifest: Manifest, batch_size: int, n_ctx: int, *, seed: int = 0,
                  start_step: int = 0, shuffle_buffer: int = 65536, pad_id: int = 0, sep_id: int = 2):
    """The endless packed training stream: pass after pass, each shuffled with its own seed.

    Batch ``k`` of the stream is the same whatever ``start_step`` is, so a resumed run
    continues the data order exactly (``start_step`` skips whole passes cheaply and the
    rest batch by batch). The order depends on ``seed`` and the pass only, not on
    TensorFlow's global seed or the device.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
        seed: data-order seed; pass ``p`` is shuffled with ``(seed, p)``.
        start_step: the first batch to produce (the run's global step).
        shuffle_buffer: poems in the shuffle buffer (bounded memory for any corpus size).
        pad_id: the padding id (never produced in training rows; kept for the signature).
        sep_id: the poem boundary id.

    Returns:
        A ``tf.data.Dataset`` of ``{"input_ids": int32[B, n_ctx], "labels": int32[B, n_ctx]}``.
    """
    import tensorflow as tf

    per_pass = batches_per_pass(manifest, batch_size, n_ctx)
    if per_pass < 1:
        raise DataDirError(
            f"{manifest.path}: the training split has {manifest.tokens('train') + manifest.poems('train')} tokens, "
            f"fewer than one batch of {batch_size}×{n_ctx}; use more poems, a smaller --batch-size or a smaller context")
    files = manifest.shards("train")
    buffer = max(1, min(shuffle_buffer, manifest.poems("train")))
    first_pass, skip = divmod(start_step, per_pass)

    def one_pass(p):
        pass_seed = tf.cast(seed, tf.int64) * 1_000_003 + p
        return _pass_dataset(files, n_ctx, sep_id, pass_seed, buffer).batch(batch_size, drop_remainder=True).take(per_pass)

    ds = tf.data.Dataset.range(first_pass, 2 ** 62).flat_map(one_pass)
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(lambda x: {"input_ids": x, "labels": x})
    options = tf.data.Options()
    options.experimental_deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_stride(n_ctx: int) -> int:
    """The default sliding-window stride of validation: half the context.

    A poem of ``L`` tokens (``[SEP]`` included) longer than the context takes
    ``1 + ceil((L − n_ctx) / stride)`` rows and each of its characters past the first
    window is predicted with between ``n_ctx − stride`` and ``n_ctx − 1`` characters of
    context. Stride 1 gives every character the most context the model has (``n_ctx − 1``)
    but costs one row per character past the context (tang-4k at n_ctx 128: +906% rows);
    half the context costs +7% rows there (+18% at n_ctx 64) and leaves at least
    ``n_ctx / 2`` characters of context.

    Args:
        n_ctx: tokens per row (at least 2).
    """
    return max(1, n_ctx // 2)


def eval_windows(seq, n_ctx: int, stride: int, pad_id: int = 0):
    """One poem's validation rows: overlapping windows that predict each token exactly once.

    Window ``i`` starts at ``min(i · stride, L − n_ctx)`` (the last one ends at the poem's
    end, so only a poem shorter than the context is padded) and scores the tokens that no
    earlier window reached; the others (its context part) and the padding get label −100.
    Token ``p`` is thus predicted by the first window holding it, from the window's tokens
    before it: ``min(p, n_ctx − 1)`` of them with stride 1, at least ``min(p, n_ctx − stride)``
    otherwise.

    Args:
        seq: int32 [L]: ``[SEP]`` + the poem.
        n_ctx: tokens per row.
        stride: tokens between window starts, 1 ≤ stride < n_ctx.
        pad_id: the padding id.

    Returns:
        ``(input_ids, labels)``, int32 [windows, n_ctx] each.
    """
    import tensorflow as tf

    length = tf.shape(seq)[0]
    extra = tf.maximum(length - n_ctx, 0)
    starts = tf.minimum(tf.range(1 + (extra + stride - 1) // stride) * stride, extra)
    pos = starts[:, None] + tf.range(n_ctx)[None, :]
    ids = tf.gather(tf.pad(seq, [[0, tf.maximum(n_ctx - length, 0)]], constant_values=pad_id), pos)
    first_new = tf.concat([[0], starts[:-1] + n_ctx], axis=0)  # the first token each window scores
    scored = (pos >= first_new[:, None]) & (pos < length)
    return ids, tf.where(scored, ids, IGNORE_INDEX)


def eval_dataset(manifest: Manifest, batch_size: int, n_ctx: int, split: str = "valid",
                 pad_id: int = 0, sep_id: int = 2, stride: int | None = None):
    """The validation poems, one per row ([SEP] + poem, padded; long poems in sliding windows).

    A poem longer than the context takes several overlapping rows (``eval_windows``): each
    token is predicted exactly once, with up to ``n_ctx − 1`` tokens of context and at least
    ``n_ctx − stride``, so the token mean of the losses is the poem-level cross-entropy. Every
    batch has exactly ``batch_size`` rows (the last is filled with all-pad rows, whose labels
    are all ignored), so a compiled step never sees a new shape.

    Args:
        manifest: the DATA_DIR's manifest.
        batch_size: rows per batch.
        n_ctx: tokens per row.
        split: which split to read.
        pad_id: the padding id.
        sep_id: the poem boundary id.
        stride: tokens between the windows of a long poem, 1 ≤ stride < n_ctx (default
            ``eval_stride(n_ctx)``: the cost/context trade-off is described there).

    Returns:
        A finite ``tf.data.Dataset`` of ``{"input_ids", "labels"}`` with labels −100 on padding
        and on tokens an earlier window of the same poem already scored.
    """
    import tensorflow as tf

    stride = eval_stride(n_ctx) if stride is None else stride
    if not 1 <= stride < n_ctx:
        raise ValueError(f"validation stride {stride}: must be ≥ 1 and < the context {n_ctx}")

    def rows(ids):
        return eval_windows(tf.concat([[sep_id], ids], axis=0), n_ctx, stride, pad_id)

    def fill(x, y):
        missing = [[0, batch_size - tf.shape(x)[0]], [0, 0]]
        return {"input_ids": tf.pad(x, missing, constant_values=pad_id),
                "labels": tf.pad(y, missing, constant_values=IGNORE_INDEX)}

    ds = tf.data.TFRecordDataset(manifest.shards(split))
    ds = ds.map(lambda s: tf.cast(tf.io.parse_single_example(s, {"ids": tf.io.RaggedFeature(tf.int64)})["ids"], tf.int32))
    ds = ds.map(rows).unbatch().batch(batch_size).map(fill)
    return ds.prefetch(tf.data.AUTOTUNE)


def read_poem_ids(manifest: Manifest, split: str) -> list[list[int]]:
    """All poems of a split as lists of ids, in file order (for tests and small tools)."""
    import tensorflow as tf

    out = []
    for s in tf.data.TFRecordDataset(manifest.shards(split)).batch(1024):
        out.extend(_parse_ids(s).to_list())
    return out
